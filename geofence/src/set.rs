//! All sites with their fences, and the R-tree over the fences' boxes.

use std::collections::HashMap;
use std::path::Path;

use model::site::{SiteLoadError, load_sites_csv};
use model::{Site, SiteId, SiteKind};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RStarInsertionStrategy, RTree, RTreeParams};

use crate::fence::{Fence, FenceError};
use crate::geojson::{FenceFeature, GeoJsonError, parse_fences_geojson};
use crate::grid::Grid;

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Node sizes of the R-tree (measured with the P2 bench).
#[derive(Debug, Clone, Copy)]
struct Params;

impl RTreeParams for Params {
    const MIN_SIZE: usize = 4;
    const MAX_SIZE: usize = 12;
    const REINSERTION_COUNT: usize = 3;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

/// A site and its fence.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteFence {
    /// The site (from CSV, or from its GeoJSON feature).
    pub site: Site,
    /// Its polygon, or the circle of `site.radius_m`.
    pub fence: Fence,
}

/// The sites could not be loaded; nothing was loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A sites CSV is wrong.
    #[error(transparent)]
    Csv(#[from] SiteLoadError),
    /// A GeoJSON file is wrong.
    #[error(transparent)]
    GeoJson(#[from] GeoJsonError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is neither `.csv` nor `.geojson` / `.json`.
    #[error("{0}: not a .csv, .geojson or .json file")]
    UnknownFileType(String),
    /// A CSV site's circle is invalid.
    #[error("site {id}: {source}")]
    Fence {
        /// The site.
        id: String,
        /// Why its fence is refused.
        source: FenceError,
    },
    /// The same site id is in two files of the same kind.
    #[error("site {0} is defined twice")]
    Duplicate(String),
}

/// All fences, indexed for point checks by a grid (an occupancy bitmap in
/// front of cell lists, `grid.rs`) and for box queries by an R-tree over
/// their boxes (degrees).
///
/// Each site keeps a stable slot for the life of the set, so a fence can be
/// replaced in place while per-vehicle state refers to the slot.
#[derive(Debug, Clone)]
pub struct FenceSet {
    sites: Vec<SiteFence>,
    by_id: HashMap<SiteId, u32>,
    tree: RTree<Entry, Params>,
    /// Point checks go through the grid (an occupancy bitmap in front of
    /// cell lists); box queries through the tree.
    grid: Grid,
}

fn entry(fence: &Fence, slot: u32) -> Entry {
    let [x0, y0, x1, y1] = fence.bbox();
    GeomWithData::new(Rectangle::from_corners([x0, y0], [x1, y1]), slot)
}

impl FenceSet {
    /// Builds the set: every site gets the polygon of the feature with its
    /// id, or else the circle of its `radius_m`. A feature whose id is not a
    /// CSV site becomes a site of its own (name and kind from its properties,
    /// defaulting to the id and `other`; position at the polygon's centre).
    pub fn new(sites: Vec<Site>, features: Vec<FenceFeature>) -> Result<FenceSet, LoadError> {
        let mut polygons: HashMap<SiteId, FenceFeature> = HashMap::with_capacity(features.len());
        for f in features {
            if polygons.contains_key(&f.id) {
                return Err(LoadError::Duplicate(f.id.to_string()));
            }
            polygons.insert(f.id.clone(), f);
        }
        let mut out = Vec::with_capacity(sites.len() + polygons.len());
        let mut by_id = HashMap::with_capacity(sites.len() + polygons.len());
        for site in sites {
            if by_id.contains_key(&site.id) {
                return Err(LoadError::Duplicate(site.id.to_string()));
            }
            let fence = match polygons.remove(&site.id) {
                Some(f) => f.fence,
                None => Fence::circle(site.lat, site.lon, site.radius_m).map_err(|source| {
                    LoadError::Fence {
                        id: site.id.to_string(),
                        source,
                    }
                })?,
            };
            by_id.insert(site.id.clone(), out.len() as u32);
            out.push(SiteFence { site, fence });
        }
        // Polygon-only sites, in file order.
        let mut rest: Vec<FenceFeature> = polygons.into_values().collect();
        rest.sort_by_key(|f| f.index);
        for f in rest {
            let (lat, lon) = f.fence.centre();
            let kind = f.kind.unwrap_or_else(|| SiteKind::parse("other"));
            let site = Site {
                name: f.name.unwrap_or_else(|| f.id.to_string()),
                radius_m: kind.default_radius_m(),
                kind,
                id: f.id.clone(),
                lat,
                lon,
            };
            by_id.insert(f.id, out.len() as u32);
            out.push(SiteFence {
                site,
                fence: f.fence,
            });
        }
        let entries = out
            .iter()
            .enumerate()
            .map(|(i, s)| entry(&s.fence, i as u32))
            .collect();
        let grid = Grid::build(&out.iter().map(|s| &s.fence).collect::<Vec<_>>());
        Ok(FenceSet {
            sites: out,
            by_id,
            tree: RTree::bulk_load_with_params(entries),
            grid,
        })
    }

    /// Loads sites from files: `.csv` (sites, read by header name) and
    /// `.geojson` / `.json` (polygon fences). All or nothing.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<FenceSet, LoadError> {
        let mut sites = Vec::new();
        let mut features = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let shown = path.display().to_string();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match ext.as_deref() {
                Some("csv") => sites.extend(load_sites_csv(path)?),
                Some("geojson" | "json") => {
                    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                        path: shown.clone(),
                        source,
                    })?;
                    let offset = features.len();
                    features.extend(parse_fences_geojson(&text, &shown)?.into_iter().map(
                        |mut f| {
                            f.index += offset;
                            f
                        },
                    ));
                }
                _ => return Err(LoadError::UnknownFileType(shown)),
            }
        }
        FenceSet::new(sites, features)
    }

    /// Bytes held by the point index (bitmap, cell lists): for reports.
    pub fn point_index_bytes(&self) -> usize {
        self.grid.heap_bytes()
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// A site and its fence by id.
    pub fn get(&self, id: &SiteId) -> Option<&SiteFence> {
        self.by_id.get(id).map(|&slot| &self.sites[slot as usize])
    }

    /// Every site and fence, in load order.
    pub fn iter(&self) -> impl Iterator<Item = &SiteFence> {
        self.sites.iter()
    }

    /// The sites whose fence contains the point. Allocates nothing.
    pub fn containing(&self, lat: f64, lon: f64) -> impl Iterator<Item = &SiteFence> {
        self.grid.hits(lat, lon).filter_map(move |(slot, sure)| {
            let s = &self.sites[slot as usize];
            (sure || s.fence.contains(lat, lon)).then_some(s)
        })
    }

    /// Calls `f` for each site whose fence contains the point, by internal
    /// iteration over the index (the fastest form; allocates nothing).
    pub fn for_each_containing<'a>(&'a self, lat: f64, lon: f64, mut f: impl FnMut(&'a SiteFence)) {
        for (slot, sure) in self.grid.hits(lat, lon) {
            let s = &self.sites[slot as usize];
            if sure || s.fence.contains(lat, lon) {
                f(s);
            }
        }
    }

    /// Replaces one site's fence at run time (e.g. `PUT /api/sites/{id}/fence`);
    /// the index is updated in the same call. Returns the old fence.
    pub fn replace(&mut self, id: &SiteId, fence: Fence) -> Result<Fence, FenceError> {
        let slot = *self
            .by_id
            .get(id)
            .ok_or_else(|| FenceError::UnknownSite(id.to_string()))?;
        let current = &mut self.sites[slot as usize];
        let removed = self.tree.remove(&entry(&current.fence, slot));
        debug_assert!(removed.is_some(), "index out of step with the fences");
        self.tree.insert(entry(&fence, slot));
        let old = std::mem::replace(&mut current.fence, fence);
        // Rare (an operator's edit): rebuilding the grid keeps it exact.
        self.grid = Grid::build(&self.sites.iter().map(|s| &s.fence).collect::<Vec<_>>());
        Ok(old)
    }

    pub(crate) fn slot(&self, id: &SiteId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn at(&self, slot: u32) -> &SiteFence {
        &self.sites[slot as usize]
    }

    /// Slots whose fence box meets the box `[min_lon, min_lat, max_lon, max_lat]`.
    pub(crate) fn slots_meeting(&self, b: [f64; 4]) -> impl Iterator<Item = u32> + '_ {
        self.tree
            .locate_in_envelope_intersecting(AABB::from_corners([b[0], b[1]], [b[2], b[3]]))
            .map(|e| e.data)
    }
}
