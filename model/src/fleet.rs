//! The vehicle register's files: CSV with `registration,supplier` columns,
//! read by header name (other columns ignored).

use std::path::Path;

use crate::ids::{SupplierId, VehicleId};

/// One register entry: this vehicle is run by this supplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisterEntry {
    /// The vehicle, normalised.
    pub vehicle: VehicleId,
    /// The supplier that runs it.
    pub supplier: SupplierId,
}

/// Why a fleet file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetLoadError {
    /// The file could not be read.
    #[error("cannot read fleet file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A required column is missing from the header.
    #[error("fleet file {path}: no {column:?} column (required: registration,supplier)")]
    MissingColumn {
        /// The file.
        path: String,
        /// The column.
        column: &'static str,
    },
    /// A row is wrong.
    #[error("fleet file {path}, row {row} (line {line}): {message}")]
    Row {
        /// The file.
        path: String,
        /// 1-based data row (the header is row 0).
        row: u64,
        /// 1-based line in the file.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Reads a fleet CSV file; any wrong row fails the whole file.
pub fn load_fleet_csv(path: &Path) -> Result<Vec<RegisterEntry>, FleetLoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FleetLoadError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_fleet_csv(&text, &shown)
}

/// [`load_fleet_csv`] on text already read; `origin` names it in errors.
/// A registration listed twice for the same supplier is kept once; for two
/// suppliers it is an error.
pub fn parse_fleet_csv(text: &str, origin: &str) -> Result<Vec<RegisterEntry>, FleetLoadError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let row_err = |row: u64, line: u64, message: String| FleetLoadError::Row {
        path: origin.to_owned(),
        row,
        line,
        message,
    };
    let headers = reader
        .headers()
        .map_err(|e| row_err(0, 1, e.to_string()))?
        .clone();
    let column = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(FleetLoadError::MissingColumn {
                path: origin.to_owned(),
                column: name,
            })
    };
    let (reg_col, sup_col) = (column("registration")?, column("supplier")?);
    let mut entries: Vec<RegisterEntry> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let row = i as u64 + 1;
        let record = record
            .map_err(|e| row_err(row, e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let vehicle = VehicleId::parse(field(reg_col))
            .map_err(|e| row_err(row, line, format!("registration: {e}")))?;
        let supplier = SupplierId::parse(field(sup_col))
            .map_err(|e| row_err(row, line, format!("supplier: {e}")))?;
        match seen.insert(vehicle, supplier) {
            Some(before) if before != supplier => {
                return Err(row_err(
                    row,
                    line,
                    format!("{vehicle} is listed for both {before} and {supplier}"),
                ));
            }
            Some(_) => {}
            None => entries.push(RegisterEntry { vehicle, supplier }),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_by_header_name_with_errors_naming_file_and_row() {
        let text = "depot,supplier,registration\nLeeds,geoamey,ab12 cde\nYork,serco,XY34ZZZ\n";
        let e = parse_fleet_csv(text, "fleet.csv").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].vehicle.as_str(), "AB12CDE");
        assert_eq!(e[1].supplier.as_str(), "serco");
        let bad = parse_fleet_csv(
            "registration,supplier\nAB12CDE,geoamey\n!!,serco\n",
            "f.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("f.csv") && bad.contains("row 2"), "{bad}");
        let twice = parse_fleet_csv(
            "registration,supplier\nAB12CDE,geoamey\nAB12CDE,serco\n",
            "f.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(twice.contains("both"), "{twice}");
        assert!(matches!(
            parse_fleet_csv("reg,supplier\n", "f.csv"),
            Err(FleetLoadError::MissingColumn {
                column: "registration",
                ..
            })
        ));
    }
}
