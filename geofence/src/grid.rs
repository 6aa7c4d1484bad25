//! A uniform grid over the fences' boxes: the first filter for a point.
//!
//! A point's cell is two multiplications away, and its candidate list is one
//! contiguous slice, so a check costs about the same with 600 fences or
//! 25,000 (an R-tree descends more levels, each a likely cache miss). The
//! R-tree stays for box queries and for points outside the grid.

/// Cells of about 2.2 km × 2 km in England and Wales.
const CELL_DEG: f64 = 0.02;
/// Never more cells than this (a set spread over the globe gets coarser cells).
const MAX_CELLS: f64 = 4_000_000.0;

use crate::fence::Fence;

/// A fence in a cell, with its box inline, so most misses are rejected by
/// four comparisons within the cell's contiguous slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// `[min_lon, min_lat, max_lon, max_lat]`.
    bbox: [f64; 4],
    /// The fence's slot in the set.
    pub(crate) slot: u32,
}

impl Candidate {
    /// Whether the point is inside the box.
    #[inline]
    pub(crate) fn covers(&self, lat: f64, lon: f64) -> bool {
        lon >= self.bbox[0] && lat >= self.bbox[1] && lon <= self.bbox[2] && lat <= self.bbox[3]
    }
}

/// Fences by grid cell, in compressed rows: the candidates of cell `c` are
/// `cells[offsets[c]..offsets[c + 1]]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grid {
    min_lon: f64,
    min_lat: f64,
    inv_cell_lon: f64,
    inv_cell_lat: f64,
    cols: usize,
    rows: usize,
    offsets: Vec<u32>,
    cells: Vec<Candidate>,
}

impl Grid {
    /// Builds the grid over the fences, slot = index.
    pub(crate) fn build<'a>(fences: impl Iterator<Item = &'a Fence>) -> Grid {
        let boxes: Vec<[f64; 4]> = fences.map(Fence::bbox).collect();
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
        let (width, height) = (extent[2] - extent[0], extent[3] - extent[1]);
        let mut cell = CELL_DEG;
        while (width / cell + 1.0) * (height / cell + 1.0) > MAX_CELLS {
            cell *= 2.0;
        }
        let cols = (width / cell) as usize + 1;
        let rows = (height / cell) as usize + 1;
        let mut grid = Grid {
            min_lon: extent[0],
            min_lat: extent[1],
            inv_cell_lon: 1.0 / cell,
            inv_cell_lat: 1.0 / cell,
            cols,
            rows,
            offsets: vec![0; cols * rows + 1],
            cells: Vec::new(),
        };
        // Counting sort: count per cell, prefix sums, then fill.
        let span = |b: &[f64; 4], g: &Grid| {
            let (c0, r0) = g.clamp_cell(b[0], b[1]);
            let (c1, r1) = g.clamp_cell(b[2], b[3]);
            (c0, r0, c1, r1)
        };
        for b in &boxes {
            let (c0, r0, c1, r1) = span(b, &grid);
            for r in r0..=r1 {
                for c in c0..=c1 {
                    grid.offsets[r * cols + c + 1] += 1;
                }
            }
        }
        for i in 1..grid.offsets.len() {
            grid.offsets[i] += grid.offsets[i - 1];
        }
        let mut next: Vec<u32> = grid.offsets[..cols * rows].to_vec();
        let unset = Candidate {
            bbox: [0.0; 4],
            slot: 0,
        };
        grid.cells = vec![unset; grid.offsets[cols * rows] as usize];
        for (slot, b) in boxes.iter().enumerate() {
            let (c0, r0, c1, r1) = span(b, &grid);
            for r in r0..=r1 {
                for c in c0..=c1 {
                    let at = &mut next[r * cols + c];
                    grid.cells[*at as usize] = Candidate {
                        bbox: *b,
                        slot: slot as u32,
                    };
                    *at += 1;
                }
            }
        }
        grid
    }

    fn clamp_cell(&self, lon: f64, lat: f64) -> (usize, usize) {
        let c = ((lon - self.min_lon) * self.inv_cell_lon).max(0.0) as usize;
        let r = ((lat - self.min_lat) * self.inv_cell_lat).max(0.0) as usize;
        (c.min(self.cols - 1), r.min(self.rows - 1))
    }

    /// The fences of the point's cell (check [`Candidate::covers`], then
    /// the fence): empty outside the grid.
    #[inline]
    pub(crate) fn candidates(&self, lat: f64, lon: f64) -> &[Candidate] {
        let x = (lon - self.min_lon) * self.inv_cell_lon;
        let y = (lat - self.min_lat) * self.inv_cell_lat;
        // Also false for NaN.
        if !(x >= 0.0 && y >= 0.0) {
            return &[];
        }
        let (c, r) = (x as usize, y as usize);
        if c >= self.cols || r >= self.rows {
            return &[];
        }
        let cell = r * self.cols + c;
        &self.cells[self.offsets[cell] as usize..self.offsets[cell + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_finds_every_box_that_covers_it_and_nothing_outside() {
        let fences = [
            Fence::circle(53.75, -1.55, 3_000.0).unwrap(),
            Fence::circle(53.8, -1.5, 3_000.0).unwrap(),
            Fence::circle(51.005, 0.005, 300.0).unwrap(),
        ];
        let grid = Grid::build(fences.iter());
        let covering = |lat, lon| {
            let mut slots: Vec<u32> = grid
                .candidates(lat, lon)
                .iter()
                .filter(|c| c.covers(lat, lon))
                .map(|c| c.slot)
                .collect();
            slots.sort();
            slots
        };
        assert_eq!(covering(53.775, -1.525), [0, 1]);
        assert_eq!(covering(51.005, 0.005), [2]);
        assert_eq!(covering(53.73, -1.57), [0]);
        assert!(grid.candidates(60.0, -1.5).is_empty());
        assert!(grid.candidates(f64::NAN, -1.5).is_empty());
        assert!(
            Grid::build(std::iter::empty())
                .candidates(53.0, -1.0)
                .is_empty()
        );
    }
}
