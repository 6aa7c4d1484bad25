//! Any `POST /tracks` body: the HTTP intake step returns a batch or a payload
//! error (400/413), never panics, and every element is accepted or rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::SupplierId;

fuzz_target!(|data: &[u8]| {
    let Ok(supplier) = SupplierId::parse("geoamey") else {
        return;
    };
    let suppliers = ingest::Suppliers::from_config(&[]).claiming_on_first_report(true);
    let (commit, _committed) = model::CommitToken::new();
    if let Ok((batch, indices, rejections)) =
        ingest::batch_from_http(data, supplier, &suppliers, commit)
    {
        assert_eq!(batch.positions.len(), indices.len());
        assert!(rejections.iter().all(|r| !indices.contains(&r.index)));
    }
});
