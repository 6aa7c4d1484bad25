//! The point index: a fine occupancy bitmap in front of coarse cell lists of
//! compact fence entries.
//!
//! A check is one bit for most points: the bitmap (at most 512 KB, so it
//! stays in the L2 cache) marks the fine cells (about 250 m in England and
//! Wales) that any fence reaches, and a point in an unmarked cell is outside
//! every fence. A point in a marked cell reads its coarse cell's list, one
//! contiguous slice of 16-byte entries (a circle's centre and radius, or a
//! polygon's bounding circle, in `f32`), and each entry answers "outside",
//! "inside" (circles, well clear of the edge) or "ask the fence" (near a
//! circle's edge, or inside a polygon's bounding circle): the exact test
//! ([`Fence::contains`]) runs only then. So the cost of a check depends on
//! how much of the map the fences cover, not on how many there are.
//!
//! Sizes follow the fences: the fine cell from their typical size (never
//! finer than a quarter of the median radius, and coarse enough for the
//! bitmap's budget), the coarse cell from their count (about four coarse
//! cells per fence, so a list holds one or two entries).
//!
//! Entries are approximate, never wrong: each circle entry carries margins
//! that bound the difference between the flat metric it uses and the
//! haversine of [`Fence::contains`], plus the `f32` rounding, so "outside"
//! and "inside" are only answered where the exact test would agree
//! (property-tested against a scan of every fence, near-edge points included).

use crate::fence::{EARTH_RADIUS_M, Fence};

const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// At most this many bits in the occupancy bitmap (512 KB).
const MAX_BITS: f64 = 4_194_304.0;
/// Fine cells are never smaller than this fraction of the median radius:
/// finer would cost memory without excluding more.
const FINE_PER_RADIUS: f64 = 0.25;
/// Coarse cells per fence (about).
const COARSE_PER_FENCE: f64 = 4.0;
/// At least this many coarse cells (256 KB of offsets), however few fences.
const MIN_COARSE_CELLS: f64 = 65_536.0;
/// Absolute slack on every margin, metres, on top of the `f32` rounding of
/// coordinates (which grows with the grid's extent: under 0.4 m across
/// England and Wales).
const ROUNDING_M: f64 = 0.25;
/// A circle whose flat-metric error bound exceeds this fraction of its
/// radius (near the poles) is always checked exactly.
const MAX_RELATIVE_ERROR: f64 = 0.05;
/// Marks an entry whose "inside its circle" still needs the exact test.
const EXACT: u32 = 1 << 31;
/// Marks a cell record that points to a list (`x` = start, `y` = length,
/// as bits) instead of holding its one entry. With [`EXACT`] it leaves slots
/// 30 bits: a set of a billion fences would not fit in memory anyway.
const LIST: u32 = 1 << 30;

/// One fence in one coarse cell. Coordinates are relative to the grid's
/// origin, in degrees of latitude, with longitude scaled by the cell row's
/// `cos(lat)`, so a distance is `sqrt(dx² + dy²)` degrees of latitude.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Entry {
    x: f32,
    y: f32,
    /// Squared outer radius: beyond it the point is outside the fence.
    out2: f32,
    /// The fence's slot, with [`EXACT`] set when inside `out2` is only a maybe.
    slot: u32,
}

impl Entry {
    fn list(start: usize, len: usize) -> Entry {
        Entry {
            x: f32::from_bits(start as u32),
            y: f32::from_bits(len as u32),
            out2: f32::NEG_INFINITY,
            slot: LIST,
        }
    }
}

/// What an entry says about a point: the fence's slot, and whether the
/// point is certainly inside (else the exact test decides).
pub(crate) type Hit = (u32, bool);

/// The point index over a fixed set of fences (slot = position).
#[derive(Debug, Clone, Default)]
pub(crate) struct Grid {
    min_lon: f64,
    min_lat: f64,
    /// Fine cells per degree of longitude and of latitude.
    inv_lon: f64,
    inv_lat: f64,
    fine_cols: usize,
    fine_rows: usize,
    /// 64-bit words per row of 8 × 8 fine-cell tiles.
    tile_cols: usize,
    /// The occupancy bitmap, one word per 8 × 8 tile of fine cells.
    bits: Vec<u64>,
    /// log2 of fine cells per coarse cell side.
    shift: u32,
    coarse_cols: usize,
    /// `cos(lat)` at each coarse row's middle: the row's longitude scale.
    row_kx: Vec<f64>,
    /// One record per coarse cell: its only entry, inline (one memory
    /// access for the common case), or a [`LIST`] of `lists[start..start + len]`.
    cells: Vec<Entry>,
    /// The entries of the cells that hold more than one (or none).
    lists: Vec<Entry>,
    /// Entries are certainly inside when `d² < out2 × inner`.
    inner: f32,
    /// The margin for rounding, degrees of latitude.
    rounding: f64,
}

/// A fence as the grid sees it.
enum Shape<'a> {
    /// Centre (lat, lon) and radius in metres.
    Circle { lat: f64, lon: f64, r: f64 },
    /// A polygon: its box and, for the bitmap, its distance to a cell's
    /// centre (in its local frame, whose longitude scale is `kx`).
    Boxed { fence: &'a Fence, kx: f64 },
}

impl<'a> Shape<'a> {
    fn of(f: &'a Fence) -> Shape<'a> {
        let (lat, lon) = f.centre();
        match f.radius_m() {
            Some(r) => Shape::Circle { lat, lon, r },
            None => Shape::Boxed {
                fence: f,
                kx: lat.to_radians().cos(),
            },
        }
    }
}

/// Relative error bound of a flat metric (longitude scaled by the cosine of
/// a latitude up to `spread` radians from every point involved, centred at
/// `lat` degrees) against haversine, for distances up to `r` metres.
fn flat_error(lat: f64, r: f64, spread: f64) -> f64 {
    let worst = (lat.abs().to_radians() + spread).min(89.9_f64.to_radians());
    let e = worst.tan() * spread;
    // Curvature terms: (r/R)² and the longitude span's square.
    let arc = r / EARTH_RADIUS_M;
    let dlon = arc / worst.cos();
    2.0 * e + arc * arc + dlon * dlon + 1e-6
}

impl Grid {
    /// Builds the index over the fences, slot = index.
    pub(crate) fn build(fences: &[&Fence]) -> Grid {
        let boxes: Vec<[f64; 4]> = fences.iter().map(|f| f.bbox()).collect();
        let Some(extent) = boxes.iter().copied().reduce(|a, b| {
            [
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]
        }) else {
            return Grid::default();
        };
        let shapes: Vec<Shape> = fences.iter().map(|f| Shape::of(f)).collect();
        let (width, height) = (extent[2] - extent[0], extent[3] - extent[1]);
        let mid_cos = ((extent[1] + extent[3]) * 0.5).to_radians().cos().max(0.05);

        // Fine cells: square in metres at the middle latitude.
        let mut sizes: Vec<f64> = fences
            .iter()
            .zip(&boxes)
            .map(|(f, b)| {
                f.radius_m()
                    .unwrap_or_else(|| (b[3] - b[1]) * 0.5 * M_PER_DEG)
            })
            .collect();
        sizes.sort_by(f64::total_cmp);
        let median_m = sizes[sizes.len() / 2].max(1.0);
        let mut fine_lat = (median_m * FINE_PER_RADIUS) / M_PER_DEG;
        let cells = |a: f64| (width * mid_cos / a + 8.0) * (height / a + 8.0);
        while cells(fine_lat) > MAX_BITS {
            fine_lat *= 1.125;
        }
        let fine_lon = fine_lat / mid_cos;
        let fine_cols = (width / fine_lon) as usize + 1;
        let fine_rows = (height / fine_lat) as usize + 1;
        let tile_cols = fine_cols.div_ceil(8);
        let tile_rows = fine_rows.div_ceil(8);

        // Coarse cells: a power of two of fine cells, about four per fence,
        // or more while their offsets are small (short lists where fences
        // cluster, as real sites do in cities).
        let target = (fences.len() as f64 * COARSE_PER_FENCE).max(MIN_COARSE_CELLS);
        let mut shift = 0;
        while shift < 16
            && ((fine_cols >> shift) + 1) as f64 * ((fine_rows >> shift) + 1) as f64 > target
        {
            shift += 1;
        }
        let coarse_cols = (fine_cols >> shift) + 1;
        let coarse_rows = (fine_rows >> shift) + 1;
        let coarse_lat = fine_lat * f64::from(1u32 << shift);
        let row_kx: Vec<f64> = (0..coarse_rows)
            .map(|r| {
                (extent[1] + (r as f64 + 0.5) * coarse_lat)
                    .to_radians()
                    .cos()
            })
            .collect();

        let mut grid = Grid {
            min_lon: extent[0],
            min_lat: extent[1],
            inv_lon: 1.0 / fine_lon,
            inv_lat: 1.0 / fine_lat,
            fine_cols,
            fine_rows,
            tile_cols,
            bits: vec![0; tile_cols * tile_rows],
            shift,
            coarse_cols,
            row_kx,
            cells: Vec::new(),
            lists: Vec::new(),
            inner: 1.0,
            // Each coordinate rounds to f32 within |x| × 2⁻²³, |x| ≤ the extent.
            rounding: ROUNDING_M / M_PER_DEG
                + 4.0 * f64::from(f32::EPSILON) * width.max(height).max(1.0),
        };

        // Fine cells: mark those that meet a fence's box and, for a circle,
        // its disc grown by the error bound.
        for (shape, b) in shapes.iter().zip(&boxes) {
            let (c0, r0) = grid.fine_cell_clamped(b[0], b[1]);
            let (c1, r1) = grid.fine_cell_clamped(b[2], b[3]);
            for r in r0..=r1 {
                for c in c0..=c1 {
                    if grid.fine_cell_meets(shape, c, r) {
                        let t = (r >> 3) * grid.tile_cols + (c >> 3);
                        grid.bits[t] |= 1u64 << (((r & 7) << 3) | (c & 7));
                    }
                }
            }
        }

        // Coarse lists, by counting sort: count, prefix sums, fill.
        let mut placed: Vec<(usize, Entry)> = Vec::new();
        let mut inner = 1.0f64;
        for (slot, (shape, b)) in shapes.iter().zip(&boxes).enumerate() {
            let (c0, r0) = grid.fine_cell_clamped(b[0], b[1]);
            let (c1, r1) = grid.fine_cell_clamped(b[2], b[3]);
            let (c0, r0, c1, r1) = (c0 >> shift, r0 >> shift, c1 >> shift, r1 >> shift);
            for r in r0..=r1 {
                for c in c0..=c1 {
                    if !grid.coarse_cell_meets(shape, c, r) {
                        continue;
                    }
                    let (entry, ratio) = grid.entry(shape, b, slot as u32, r, coarse_lat);
                    inner = inner.min(ratio);
                    placed.push((r * coarse_cols + c, entry));
                }
            }
        }
        let n_cells = coarse_cols * coarse_rows;
        let mut offsets = vec![0u32; n_cells + 1];
        for (cell, _) in &placed {
            offsets[cell + 1] += 1;
        }
        for i in 1..offsets.len() {
            offsets[i] += offsets[i - 1];
        }
        let mut next: Vec<u32> = offsets[..n_cells].to_vec();
        let mut sorted = vec![Entry::default(); placed.len()];
        for (cell, entry) in placed {
            sorted[next[cell] as usize] = entry;
            next[cell] += 1;
        }
        // A cell with one entry holds it inline; the others point into `lists`.
        grid.cells = Vec::with_capacity(n_cells);
        for c in 0..n_cells {
            let list = &sorted[offsets[c] as usize..offsets[c + 1] as usize];
            if let [only] = list {
                grid.cells.push(*only);
            } else {
                grid.cells.push(Entry::list(grid.lists.len(), list.len()));
                grid.lists.extend_from_slice(list);
            }
        }
        // Rounded down so that "certainly inside" never grows past the bound.
        grid.inner = (inner.max(0.0) as f32) * (1.0 - 1e-6);
        grid
    }

    fn fine_cell_clamped(&self, lon: f64, lat: f64) -> (usize, usize) {
        let c = ((lon - self.min_lon) * self.inv_lon).max(0.0) as usize;
        let r = ((lat - self.min_lat) * self.inv_lat).max(0.0) as usize;
        (c.min(self.fine_cols - 1), r.min(self.fine_rows - 1))
    }

    /// The box `[min_lon, min_lat, max_lon, max_lat]` of fine cells
    /// `c0..=c1`, `r0..=r1`, grown a little against rounding at the edges.
    fn cells_box(&self, c0: usize, r0: usize, c1: usize, r1: usize) -> [f64; 4] {
        let pad = 1e-9;
        [
            self.min_lon + c0 as f64 / self.inv_lon - pad,
            self.min_lat + r0 as f64 / self.inv_lat - pad,
            self.min_lon + (c1 + 1) as f64 / self.inv_lon + pad,
            self.min_lat + (r1 + 1) as f64 / self.inv_lat + pad,
        ]
    }

    /// Whether a circle (grown by its error bound) meets the box; anything
    /// else is taken to meet every cell of its own box.
    fn disc_meets(shape: &Shape, cell: [f64; 4]) -> bool {
        let Shape::Circle { lat, lon, r } = *shape else {
            return true;
        };
        let kx = lat.to_radians().cos();
        let spread = r / EARTH_RADIUS_M;
        let err = flat_error(lat, r, spread);
        if err > MAX_RELATIVE_ERROR {
            return true;
        }
        let reach = (r * (1.0 + err) + ROUNDING_M) / M_PER_DEG;
        let nx = lon.clamp(cell[0], cell[2]);
        let ny = lat.clamp(cell[1], cell[3]);
        let (dx, dy) = ((nx - lon) * kx, ny - lat);
        dx * dx + dy * dy <= reach * reach
    }

    fn fine_cell_meets(&self, shape: &Shape, c: usize, r: usize) -> bool {
        let cell = self.cells_box(c, r, c, r);
        match *shape {
            Shape::Circle { .. } => Grid::disc_meets(shape, cell),
            Shape::Boxed { fence, kx } => {
                // Some point of the cell is inside only if the polygon comes
                // within half the cell's diagonal of its centre (distances in
                // the polygon's own plane, where this is exact).
                let (w, h) = (
                    (cell[2] - cell[0]) * kx * M_PER_DEG,
                    (cell[3] - cell[1]) * M_PER_DEG,
                );
                let half_diagonal = 0.5 * (w * w + h * h).sqrt();
                let (clat, clon) = ((cell[1] + cell[3]) * 0.5, (cell[0] + cell[2]) * 0.5);
                fence.signed_distance_m(clat, clon) <= half_diagonal * (1.0 + 1e-9) + ROUNDING_M
            }
        }
    }

    fn coarse_cell_meets(&self, shape: &Shape, c: usize, r: usize) -> bool {
        let s = self.shift;
        let b = self.cells_box(c << s, r << s, ((c + 1) << s) - 1, ((r + 1) << s) - 1);
        Grid::disc_meets(shape, b)
    }

    /// A fence's entry in coarse row `row`, and the ratio `(inner / outer)²`
    /// of its certainly-inside radius to its outer one (1 for polygons,
    /// which never answer "inside").
    fn entry(
        &self,
        shape: &Shape,
        b: &[f64; 4],
        slot: u32,
        row: usize,
        coarse_lat: f64,
    ) -> (Entry, f64) {
        let kx = self.row_kx[row];
        let at = |lat: f64, lon: f64| {
            (
                ((lon - self.min_lon) * kx) as f32,
                (lat - self.min_lat) as f32,
            )
        };
        let rounding = self.rounding;
        match *shape {
            Shape::Circle { lat, lon, r } => {
                // Every point this entry judges is in the row, and within
                // about r of the centre: the row's cosine is off by at most
                // the row's height plus the radius.
                let spread = r / EARTH_RADIUS_M + coarse_lat.to_radians();
                let row_mid = self.min_lat + (row as f64 + 0.5) * coarse_lat;
                let err = flat_error(row_mid.abs().max(lat.abs()), r, spread);
                let (x, y) = at(lat, lon);
                if err > MAX_RELATIVE_ERROR {
                    let e = Entry {
                        x,
                        y,
                        out2: f32::INFINITY,
                        slot: slot | EXACT,
                    };
                    return (e, 1.0);
                }
                let r_deg = r / M_PER_DEG;
                let outer = r_deg * (1.0 + err) + rounding;
                let inner = r_deg * (1.0 - err) - rounding;
                let ratio = if inner > 0.0 {
                    (inner / outer).powi(2)
                } else {
                    0.0
                };
                let out2 = (outer * outer) as f32 * (1.0 + 1e-6);
                (Entry { x, y, out2, slot }, ratio)
            }
            Shape::Boxed { fence, .. } => {
                // The smallest circle about the box's centre that holds
                // every vertex, in this row's metric: the polygon lies in
                // its vertices' convex hull, so in the circle (the metric is
                // an affine map of degrees, as is the polygon's own plane).
                let (clat, clon) = ((b[1] + b[3]) * 0.5, (b[0] + b[2]) * 0.5);
                let far2 = fence
                    .as_polygon()
                    .into_iter()
                    .flat_map(|mp| mp.0.iter())
                    .flat_map(|p| p.exterior().0.iter())
                    .map(|c| ((c.x - clon) * kx).powi(2) + (c.y - clat).powi(2))
                    .fold(0.0, f64::max);
                let outer = far2.sqrt() * (1.0 + 1e-6) + rounding;
                let (x, y) = at(clat, clon);
                let out2 = (outer * outer) as f32 * (1.0 + 1e-6);
                (
                    Entry {
                        x,
                        y,
                        out2,
                        slot: slot | EXACT,
                    },
                    1.0,
                )
            }
        }
    }

    /// The fences that may contain the point, each with whether it certainly
    /// does (else ask [`Fence::contains`]). Empty outside every fence's
    /// reach, mostly after one bit.
    #[inline]
    pub(crate) fn hits(&self, lat: f64, lon: f64) -> Hits<'_> {
        let x = (lon - self.min_lon) * self.inv_lon;
        let y = (lat - self.min_lat) * self.inv_lat;
        // Also false for NaN.
        if !(x >= 0.0 && y >= 0.0) {
            return Hits::none();
        }
        let (c, r) = (x as usize, y as usize);
        if c >= self.fine_cols || r >= self.fine_rows {
            return Hits::none();
        }
        let word = self.bits[(r >> 3) * self.tile_cols + (c >> 3)];
        if word & (1u64 << (((r & 7) << 3) | (c & 7))) == 0 {
            return Hits::none();
        }
        let (cc, cr) = (c >> self.shift, r >> self.shift);
        let record = &self.cells[cr * self.coarse_cols + cc];
        let entries = if record.slot & LIST == 0 {
            std::slice::from_ref(record)
        } else {
            let (start, len) = (record.x.to_bits() as usize, record.y.to_bits() as usize);
            &self.lists[start..start + len]
        };
        let kx = self.row_kx[cr];
        Hits {
            entries: entries.iter(),
            x: ((lon - self.min_lon) * kx) as f32,
            y: (lat - self.min_lat) as f32,
            inner: self.inner,
        }
    }

    /// Bytes held by the index (for the bench's report).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bits.len() * 8
            + (self.cells.len() + self.lists.len()) * std::mem::size_of::<Entry>()
            + self.row_kx.len() * 8
    }
}

/// The candidates of one point: see [`Grid::hits`].
pub(crate) struct Hits<'a> {
    entries: std::slice::Iter<'a, Entry>,
    x: f32,
    y: f32,
    inner: f32,
}

impl Hits<'_> {
    fn none() -> Self {
        Hits {
            entries: [].iter(),
            x: 0.0,
            y: 0.0,
            inner: 0.0,
        }
    }
}

impl Iterator for Hits<'_> {
    type Item = Hit;

    #[inline]
    fn next(&mut self) -> Option<Hit> {
        for e in self.entries.by_ref() {
            let (dx, dy) = (self.x - e.x, self.y - e.y);
            let d2 = dx * dx + dy * dy;
            if d2 > e.out2 {
                continue;
            }
            let sure = e.slot & EXACT == 0 && d2 < e.out2 * self.inner;
            return Some((e.slot & !EXACT, sure));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(grid: &Grid, lat: f64, lon: f64) -> Vec<u32> {
        let mut slots: Vec<u32> = grid.hits(lat, lon).map(|(s, _)| s).collect();
        slots.sort();
        slots
    }

    #[test]
    fn a_point_finds_every_fence_that_may_hold_it_and_nothing_far() {
        let fences = [
            Fence::circle(53.75, -1.55, 3_500.0).unwrap(),
            Fence::circle(53.8, -1.5, 3_500.0).unwrap(),
            Fence::circle(51.005, 0.005, 300.0).unwrap(),
        ];
        let grid = Grid::build(&fences.iter().collect::<Vec<_>>());
        // About 3.2 km from both centres.
        assert!(fences[0].contains(53.775, -1.525) && fences[1].contains(53.775, -1.525));
        assert_eq!(hits(&grid, 53.775, -1.525), [0, 1]);
        assert_eq!(hits(&grid, 51.005, 0.005), [2]);
        assert_eq!(hits(&grid, 53.75, -1.55), [0]);
        // Well inside: no exact test needed.
        assert!(grid.hits(53.75, -1.55).all(|(_, sure)| sure));
        // Between the fences, in the grid's extent: nothing.
        assert!(hits(&grid, 52.0, -0.8).is_empty());
        assert!(grid.hits(60.0, -1.5).next().is_none());
        assert!(grid.hits(f64::NAN, -1.5).next().is_none());
        assert!(grid.hits(53.75, f64::INFINITY).next().is_none());
        assert!(Grid::build(&[]).hits(53.0, -1.0).next().is_none());
    }

    #[test]
    fn a_polygon_with_a_hole_and_two_parts_is_never_missed() {
        use geo::{LineString, MultiPolygon, Polygon};
        let square = |lon: f64, lat: f64, half: f64| {
            LineString::from(vec![
                (lon - half, lat - half),
                (lon + half, lat - half),
                (lon + half, lat + half),
                (lon - half, lat + half),
                (lon - half, lat - half),
            ])
        };
        let holed = Polygon::new(square(-1.5, 53.8, 0.02), vec![square(-1.5, 53.8, 0.012)]);
        let other = Polygon::new(square(-1.45, 53.8, 0.005), vec![]);
        let fences = [
            Fence::circle(53.8, -1.53, 500.0).unwrap(),
            Fence::polygon(MultiPolygon(vec![holed, other])).unwrap(),
        ];
        let grid = Grid::build(&fences.iter().collect::<Vec<_>>());
        let (mut inside, mut checked) = (0, 0);
        for i in 0..=120 {
            for j in 0..=60 {
                let lon = -1.525 + i as f64 * 0.0007;
                let lat = 53.775 + j as f64 * 0.00083;
                let listed = grid.hits(lat, lon).any(|(slot, sure)| slot == 1 && !sure);
                if fences[1].contains(lat, lon) {
                    assert!(listed, "({lat}, {lon}) is inside but not a candidate");
                    inside += 1;
                }
                checked += 1;
            }
        }
        // Both parts and the hole were crossed.
        assert!(
            inside > checked / 5 && inside < checked * 4 / 5,
            "{inside} of {checked}"
        );
        // The middle of the hole (800 m from its edge; cells of about 550 m)
        // is in no marked cell of the polygon.
        assert!(!grid.hits(53.8, -1.5).any(|(slot, _)| slot == 1));
    }

    #[test]
    fn entries_are_sixteen_bytes_and_the_bitmap_is_bounded() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        // Fences spread over the globe: the bitmap keeps its budget.
        let fences = [
            Fence::circle(-60.0, -170.0, 100.0).unwrap(),
            Fence::circle(70.0, 170.0, 100.0).unwrap(),
        ];
        let grid = Grid::build(&fences.iter().collect::<Vec<_>>());
        assert!(
            grid.bits.len() * 64 <= 5_000_000,
            "{}",
            grid.bits.len() * 64
        );
        assert_eq!(hits(&grid, 70.0, 170.0), [1]);
        assert_eq!(hits(&grid, -60.0, -170.0), [0]);
    }
}
