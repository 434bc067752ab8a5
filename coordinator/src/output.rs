//! Tables for people, JSON for programs.

/// A plain text table: columns padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            out.push_str(&padded_line(row, &widths));
        }
        out
    }
}

/// One table line: each cell padded to its column's width (a longer cell pushes
/// the rest right), two spaces apart, the last cell not padded. For tables
/// printed a row at a time, whose widths are chosen before the rows exist.
pub fn padded_line(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            let w = widths.get(i).copied().unwrap_or(0);
            line.push_str(&format!("{cell:<w$}  "));
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

/// "3d 4h", "12m 5s" — coarse, for tables.
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Bytes as MiB or GiB.
pub fn bytes(n: u64) -> String {
    if n >= 10 << 30 {
        format!("{}G", n >> 30)
    } else {
        format!("{}M", n >> 20)
    }
}
