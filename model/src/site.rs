//! Sites (prisons, courts, police stations, ...) and the CSV loader.

use std::path::Path;

use serde::Serialize;

use crate::ids::SiteId;

/// The kind of a site; decides the default fence radius.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum SiteKind {
    /// A prison or young offender institution.
    Prison,
    /// A court.
    Court,
    /// A police station (custody suite).
    Police,
    /// Any other kind, kept as written (`secure_childrens_home`, `hospital`, ...).
    Other(String),
}

impl SiteKind {
    /// Maps the CSV's `kind` column.
    pub fn parse(s: &str) -> SiteKind {
        match s {
            "prison" => SiteKind::Prison,
            "court" => SiteKind::Court,
            "police" => SiteKind::Police,
            other => SiteKind::Other(other.to_owned()),
        }
    }

    /// The kind as written in the CSV.
    pub fn as_str(&self) -> &str {
        match self {
            SiteKind::Prison => "prison",
            SiteKind::Court => "court",
            SiteKind::Police => "police",
            SiteKind::Other(s) => s,
        }
    }

    /// The fence radius used when a site has no polygon and no `radius_m`:
    /// generous, because the coordinates are postcode centres, not gates.
    pub fn default_radius_m(&self) -> f64 {
        match self {
            SiteKind::Prison => 400.0,
            SiteKind::Court | SiteKind::Police => 150.0,
            SiteKind::Other(_) => 250.0,
        }
    }
}

impl From<SiteKind> for String {
    fn from(k: SiteKind) -> String {
        k.as_str().to_owned()
    }
}

/// A site as loaded from CSV.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    /// `id`
    pub id: SiteId,
    /// `name`
    pub name: String,
    /// `kind`
    pub kind: SiteKind,
    /// `lat`, WGS84
    pub lat: f64,
    /// `lon`, WGS84
    pub lon: f64,
    /// `radius_m`, or the kind's default.
    pub radius_m: f64,
}

/// A CSV that could not be loaded; names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SiteLoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A required column is missing from the header.
    #[error("{path}: the header has no `{column}` column (required: id,name,kind,lat,lon)")]
    MissingColumn {
        /// The file.
        path: String,
        /// The missing column.
        column: &'static str,
    },
    /// A row is wrong.
    #[error("{path}, line {line}: {message}")]
    Row {
        /// The file.
        path: String,
        /// 1-based line number in the file.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Loads sites from a CSV read by header name (`id,name,kind,lat,lon`
/// required, `radius_m` optional, other columns ignored). Any wrong row fails
/// the whole load: a half-loaded site list is never returned.
pub fn load_sites_csv(path: &Path) -> Result<Vec<Site>, SiteLoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SiteLoadError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_sites_csv(&text, &shown)
}

/// [`load_sites_csv`] on text already read; `origin` names it in errors.
pub fn parse_sites_csv(text: &str, origin: &str) -> Result<Vec<Site>, SiteLoadError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let row_err = |line: u64, message: String| SiteLoadError::Row {
        path: origin.to_owned(),
        line,
        message,
    };
    let headers = reader
        .headers()
        .map_err(|e| row_err(1, e.to_string()))?
        .clone();
    let column = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(SiteLoadError::MissingColumn {
                path: origin.to_owned(),
                column: name,
            })
    };
    let (id_col, name_col, kind_col, lat_col, lon_col) = (
        column("id")?,
        column("name")?,
        column("kind")?,
        column("lat")?,
        column("lon")?,
    );
    let radius_col = headers.iter().position(|h| h == "radius_m");

    let mut sites = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| row_err(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let id = SiteId::parse(field(id_col)).map_err(|e| row_err(line, e.to_string()))?;
        let number = |col: usize, name: &str| -> Result<f64, SiteLoadError> {
            field(col)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| row_err(line, format!("{name} {:?} is not a number", field(col))))
        };
        let lat = number(lat_col, "lat")?;
        let lon = number(lon_col, "lon")?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(row_err(
                line,
                format!("lat/lon ({lat}, {lon}) out of range (is the order swapped?)"),
            ));
        }
        let kind = SiteKind::parse(field(kind_col));
        let radius_m = match radius_col.map(field).filter(|s| !s.is_empty()) {
            None => kind.default_radius_m(),
            Some(_) => {
                let r = number(radius_col.unwrap_or_default(), "radius_m")?;
                if !(10.0..=20_000.0).contains(&r) {
                    return Err(row_err(line, format!("radius_m {r} not in 10..20000")));
                }
                r
            }
        };
        let name = field(name_col);
        if name.is_empty() {
            return Err(row_err(line, "name is empty".into()));
        }
        if !seen.insert(id.clone()) {
            return Err(row_err(line, format!("site {id} appears twice")));
        }
        sites.push(Site {
            id,
            name: name.to_owned(),
            kind,
            lat,
            lon,
            radius_m,
        });
    }
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_by_header_name_with_defaults() {
        let csv = "name,id,lat,lon,kind,radius_m,extra\n\"Leeds, HMP\",LEI,53.79,-1.58,prison,,x\nCourt,CRT-A,51.5,-0.1,court,300,y\nHome,SCH1,52,-1,secure_childrens_home,,z\n";
        let sites = parse_sites_csv(csv, "t.csv").unwrap();
        assert_eq!(sites.len(), 3);
        assert_eq!(sites[0].name, "Leeds, HMP");
        assert_eq!(sites[0].radius_m, 400.0);
        assert_eq!(sites[1].radius_m, 300.0);
        assert_eq!(sites[2].radius_m, 250.0);
    }

    #[test]
    fn a_wrong_row_names_its_line() {
        let csv = "id,name,kind,lat,lon\nLEI,Leeds,prison,53.79,-1.58\nbad id,X,court,51,0\n";
        let err = parse_sites_csv(csv, "t.csv").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        let csv = "id,name,kind,lat,lon\nLEI,Leeds,prison,-1.58,253.79\n";
        assert!(
            parse_sites_csv(csv, "t.csv")
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        let csv = "id,name,kind,lon\nLEI,Leeds,prison,1\n";
        assert!(
            parse_sites_csv(csv, "t.csv")
                .unwrap_err()
                .to_string()
                .contains("`lat`")
        );
    }

    #[test]
    fn the_shipped_sites_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sites.csv");
        let sites = load_sites_csv(&path).unwrap();
        assert_eq!(sites.len(), 603);
        assert!(
            sites
                .iter()
                .any(|s| s.id.as_str() == "LEI" && s.kind == SiteKind::Prison)
        );
    }
}
