//! What a run found: a human summary and a JSON-lines file (one line per difference, then one
//! summary line).

use std::io::Write;

use serde::Serialize;

use crate::error::ReconcileError;

/// The kind of a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum Kind {
    /// In the source, not in the warehouse (absent, or soft-deleted there).
    Missing,
    /// Live in the warehouse, absent from the source.
    Extra,
    /// Same key, different values.
    Mismatched,
}

impl Kind {
    /// Every kind, in report order (also the metric's label values).
    pub const ALL: [Kind; 3] = [Kind::Missing, Kind::Extra, Kind::Mismatched];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Mismatched => "mismatched",
        }
    }
}

/// One row that differs after re-checking.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// `db.table`.
    pub table: String,
    /// Missing, extra or mismatched.
    pub kind: Kind,
    /// The primary key as the change-event key JSON object.
    pub key: serde_json::Value,
    /// Columns whose values differ (mismatched), or `_cdc_deleted` for a row soft-deleted in the
    /// warehouse but live at the source.
    pub columns: Vec<String>,
    /// `_cdc_version` of the warehouse row, when there is one.
    pub warehouse_version: Option<String>,
    /// The source binlog position observed just before the source row was last read.
    pub source_position: String,
    /// Whether a repair event was produced for it.
    pub repaired: bool,
}

/// The result of reconciling one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `db.table`.
    pub table: String,
    /// The warehouse table, `schema.table`.
    pub warehouse_table: String,
    /// Source rows compared.
    pub rows_checked: u64,
    /// Live warehouse rows compared.
    pub warehouse_rows: u64,
    /// Chunks compared.
    pub chunks: u64,
    /// Chunks whose digests differed (drilled down).
    pub chunks_mismatched: u64,
    /// Rows that differed at first but converged during the re-check (changes in flight).
    pub in_flight: u64,
    /// Differences beyond `reconcile.max_differences`, counted but not listed, per kind in
    /// [`Kind::ALL`] order.
    pub not_listed: [u64; 3],
    /// Repair events produced.
    pub repaired: u64,
    /// Wall time of the run, seconds.
    pub duration_seconds: f64,
    /// Differences that persisted, in key order per kind.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Number of differences of `kind` (listed ones).
    pub fn count(&self, kind: Kind) -> usize {
        self.differences.iter().filter(|d| d.kind == kind).count()
    }

    /// Number of differences of `kind`, listed or not.
    pub fn total(&self, kind: Kind) -> u64 {
        self.count(kind) as u64 + self.not_listed[kind as usize]
    }

    /// True when the warehouse equals the source.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty() && self.not_listed.iter().all(|n| *n == 0)
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "reconcile {} → {}: {} source rows, {} warehouse rows, {} chunks ({} drilled down), {:.1} s ({:.0} rows/s)\n",
            self.table,
            self.warehouse_table,
            self.rows_checked,
            self.warehouse_rows,
            self.chunks,
            self.chunks_mismatched,
            self.duration_seconds,
            self.rows_checked as f64 / self.duration_seconds.max(1e-9)
        );
        if self.is_clean() {
            s.push_str("  OK: the warehouse equals the source");
            if self.in_flight > 0 {
                s.push_str(&format!(
                    " ({} rows were changing and converged during the re-check)",
                    self.in_flight
                ));
            }
            s.push('\n');
            return s;
        }
        for kind in Kind::ALL {
            let ds: Vec<&Difference> = self.differences.iter().filter(|d| d.kind == kind).collect();
            if ds.is_empty() {
                continue;
            }
            s.push_str(&format!("  {}: {}\n", kind.as_str(), ds.len()));
            for d in ds.iter().take(20) {
                let cols = if d.columns.is_empty() {
                    String::new()
                } else {
                    format!(" columns {}", d.columns.join(", "))
                };
                s.push_str(&format!("    {}{cols}\n", d.key));
            }
            if ds.len() > 20 {
                s.push_str(&format!(
                    "    ... and {} more (see the report file)\n",
                    ds.len() - 20
                ));
            }
        }
        let not_listed: u64 = self.not_listed.iter().sum();
        if not_listed > 0 {
            s.push_str(&format!(
                "  {not_listed} more differences not listed (reconcile.max_differences)\n"
            ));
        }
        if self.in_flight > 0 {
            s.push_str(&format!(
                "  {} rows were changing and converged during the re-check (not drift)\n",
                self.in_flight
            ));
        }
        if self.repaired > 0 {
            s.push_str(&format!("  repair: {} change events produced; the applier applies them like any other change\n", self.repaired));
        }
        s
    }

    /// Appends the report to `out` as JSON lines: `{"type":"difference",...}` per difference,
    /// then `{"type":"summary",...}`.
    pub fn write_jsonl(&self, out: &mut impl Write) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a, T: Serialize> {
            #[serde(rename = "type")]
            ty: &'static str,
            #[serde(flatten)]
            body: &'a T,
        }
        for d in &self.differences {
            serde_json::to_writer(
                &mut *out,
                &Line {
                    ty: "difference",
                    body: d,
                },
            )?;
            out.write_all(b"\n")?;
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            table: &'a str,
            warehouse_table: &'a str,
            rows_checked: u64,
            warehouse_rows: u64,
            chunks: u64,
            chunks_mismatched: u64,
            missing: u64,
            extra: u64,
            mismatched: u64,
            in_flight: u64,
            repaired: u64,
            duration_seconds: f64,
        }
        let s = Summary {
            table: &self.table,
            warehouse_table: &self.warehouse_table,
            rows_checked: self.rows_checked,
            warehouse_rows: self.warehouse_rows,
            chunks: self.chunks,
            chunks_mismatched: self.chunks_mismatched,
            missing: self.total(Kind::Missing),
            extra: self.total(Kind::Extra),
            mismatched: self.total(Kind::Mismatched),
            in_flight: self.in_flight,
            repaired: self.repaired,
            duration_seconds: self.duration_seconds,
        };
        serde_json::to_writer(
            &mut *out,
            &Line {
                ty: "summary",
                body: &s,
            },
        )?;
        out.write_all(b"\n")
    }

    /// Writes the JSON-lines report to `path` (replacing it).
    pub fn write_file(&self, path: &str) -> Result<(), ReconcileError> {
        let err = |source| ReconcileError::Report {
            path: path.to_string(),
            source,
        };
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        self.write_jsonl(&mut f).map_err(err)?;
        f.flush().map_err(err)
    }
}
