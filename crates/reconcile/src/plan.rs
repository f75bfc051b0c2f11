//! The SQL of one table's comparison, built once per run from the two schemas.
//!
//! Keys are compared as integers: chunk ranges are keyset ranges `(lo, hi]` on the primary key,
//! and the two databases must agree on which rows fall into a range and in what order. For
//! integer keys they do; for text keys they would not (MySQL collations versus PostgreSQL's),
//! so a table whose key has a non-integer column is refused with a clear error rather than
//! compared wrongly.

use std::collections::HashMap;
use std::sync::Arc;

use cdc_event::{ColumnType, TableId, TableSchema};

use crate::canon::{
    my_canonical, my_ident, my_json_text, my_piece, pg_canonical, pg_ident, pg_piece, RustCanon,
};
use crate::error::ReconcileError;
use crate::schema::Flavor;

/// A primary-key value: one integer per key column (every integer type fits in `i128`).
pub type Key = Vec<i128>;

/// One column as both sides see it.
#[derive(Debug, Clone)]
pub struct ColPlan {
    /// Column name.
    pub name: String,
    /// Source type.
    pub ty: ColumnType,
    /// MySQL canonical expression, or the JSON text expression for JSON columns.
    pub my: String,
    /// PostgreSQL canonical expression.
    pub pg: String,
    /// Canonicalised in Rust (JSON, FLOAT, DOUBLE) rather than in SQL, in the drill-down.
    pub rust: Option<RustCanon>,
    /// MySQL digest piece (`canon::my_piece`); `None` when the piece is made in Rust.
    pub my_piece: Option<String>,
    /// PostgreSQL digest piece (`canon::pg_piece`); `None` when the piece is made in Rust.
    pub pg_piece: Option<String>,
}

/// One selected value of a digest query that is finished in Rust.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    /// The row text of one or more consecutive columns, separators included, made by the server.
    Sql,
    /// One column's raw value, made into its piece in Rust.
    Rust(RustCanon),
}

/// Everything needed to query one table on both sides.
#[derive(Debug)]
pub struct TablePlan {
    /// `db.table`.
    pub table: TableId,
    /// `db.table` as text (metric label, report).
    pub label: String,
    /// Source schema in change-event form (repair events carry it).
    pub schema: Arc<TableSchema>,
    /// `` `db`.`table` ``.
    pub my_table: String,
    /// `"schema"."table"`.
    pub pg_table: String,
    /// Indexes of the key columns in `cols`, in key order.
    pub key: Vec<usize>,
    /// Every column in source order.
    pub cols: Vec<ColPlan>,
    /// The selected values of the source digest query when it is finished in Rust (a FLOAT,
    /// a DOUBLE, or JSON on MariaDB); empty when the server computes the whole digest.
    pub my_parts: Vec<Part>,
    /// The same for the warehouse (FLOAT and DOUBLE only: `jsonb` text is canonical already).
    pub pg_parts: Vec<Part>,
    /// The row hash both sides compute.
    pub hash: RowHash,
}

/// The function whose first 64 bits are a row's hash: one that the source, PostgreSQL and the
/// client all compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowHash {
    /// MD5: the cheapest, on MariaDB.
    Md5,
    /// SHA-256: MySQL 9 has removed `MD5()` and `SHA1()`.
    Sha256,
}

impl RowHash {
    /// The first 64 bits of the hash of `bytes`, big-endian (as `CONV(LEFT(hex, 16), 16, 10)`).
    pub fn first64(self, bytes: &[u8]) -> u64 {
        use md5::Digest as _;
        let mut out = [0u8; 8];
        match self {
            RowHash::Md5 => out.copy_from_slice(&md5::Md5::digest(bytes)[..8]),
            RowHash::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(bytes)[..8]),
        }
        u64::from_be_bytes(out)
    }

    fn my_hex(self, e: &str) -> String {
        match self {
            RowHash::Md5 => format!("MD5({e})"),
            RowHash::Sha256 => format!("SHA2({e}, 256)"),
        }
    }

    fn pg_hex(self, e: &str) -> String {
        match self {
            RowHash::Md5 => format!("md5({e})"),
            RowHash::Sha256 => format!("encode(sha256(convert_to({e}, 'UTF8')), 'hex')"),
        }
    }
}

/// A keyset range `(lo, hi]`; `None` is unbounded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Range {
    /// Exclusive lower bound.
    pub lo: Option<Key>,
    /// Inclusive upper bound.
    pub hi: Option<Key>,
}

fn is_integer(ty: &ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::TinyInt { .. }
            | ColumnType::SmallInt { .. }
            | ColumnType::MediumInt { .. }
            | ColumnType::Int { .. }
            | ColumnType::BigInt { .. }
    )
}

impl TablePlan {
    /// Builds the plan; fails with the fix when the warehouse table or a column is missing or the
    /// key is not made of integers. On MySQL, JSON columns stay in the server-side digest (its
    /// JSON text has `jsonb`'s key order and spacing) and rows are hashed with SHA-256.
    pub fn new(
        table: TableId,
        schema: TableSchema,
        pg_schema: &str,
        pg_columns: &HashMap<String, String>,
        flavor: Flavor,
    ) -> Result<Self, ReconcileError> {
        let json_in_sql = flavor == Flavor::Mysql;
        let label = table.to_string();
        if pg_columns.is_empty() {
            return Err(ReconcileError::Definite(format!(
                "warehouse table {pg_schema}.{} does not exist; start the applier (it creates the table on the first event) or check warehouse.schema",
                table.table
            )));
        }
        for b in ["_cdc_version", "_cdc_deleted"] {
            if !pg_columns.contains_key(b) {
                return Err(ReconcileError::Definite(format!(
                    "warehouse table {pg_schema}.{} has no {b} column; it is not a cdcsync target table",
                    table.table
                )));
            }
        }
        let mut cols = Vec::with_capacity(schema.columns.len());
        for c in &schema.columns {
            let pg_type = pg_columns.get(&c.name).ok_or_else(|| {
                ReconcileError::Definite(format!(
                    "warehouse table {pg_schema}.{} has no column {:?}; the applier adds new columns with the next event that carries them",
                    table.table, c.name
                ))
            })?;
            let myc = my_ident(&c.name);
            let pgc = pg_ident(&c.name);
            let rust = RustCanon::of(&c.ty);
            cols.push(ColPlan {
                name: c.name.clone(),
                ty: c.ty.clone(),
                my: if rust == Some(RustCanon::Json) {
                    my_json_text(&myc)
                } else {
                    my_canonical(&myc, &c.ty).unwrap_or_default()
                },
                pg: pg_canonical(&pgc, &c.ty, pg_type),
                rust,
                my_piece: my_piece(&myc, &c.ty, json_in_sql),
                pg_piece: pg_piece(&pgc, &c.ty, pg_type),
            });
        }
        let mut key = Vec::new();
        for k in &schema.primary_key {
            let i = cols.iter().position(|c| &c.name == k).ok_or_else(|| {
                ReconcileError::Definite(format!("key column {k} is not a column"))
            })?;
            if !is_integer(&cols[i].ty) {
                return Err(ReconcileError::Definite(format!(
                    "{label}: key column {k} is not an integer column; reconciliation supports integer primary keys (MySQL and PostgreSQL order text keys differently)"
                )));
            }
            key.push(i);
        }
        let parts = |piece: fn(&ColPlan) -> &Option<String>| -> Vec<Part> {
            if cols.iter().all(|c| piece(c).is_some()) {
                return Vec::new();
            }
            let mut parts: Vec<Part> = Vec::new();
            for c in &cols {
                match (piece(c), c.rust) {
                    (Some(_), _) if parts.last() == Some(&Part::Sql) => {}
                    (Some(_), _) => parts.push(Part::Sql),
                    (None, Some(r)) => parts.push(Part::Rust(r)),
                    (None, None) => unreachable!("a column without a SQL piece is made in Rust"),
                }
            }
            parts
        };
        let my_parts = parts(|c| &c.my_piece);
        let pg_parts = parts(|c| &c.pg_piece);
        Ok(TablePlan {
            my_table: format!("{}.{}", my_ident(&table.db), my_ident(&table.table)),
            pg_table: format!("{}.{}", pg_ident(pg_schema), pg_ident(&table.table)),
            table,
            label,
            schema: Arc::new(schema),
            key,
            cols,
            my_parts,
            pg_parts,
            hash: match flavor {
                Flavor::Mariadb => RowHash::Md5,
                Flavor::Mysql => RowHash::Sha256,
            },
        })
    }

    fn key_names(&self, quote: fn(&str) -> String) -> Vec<String> {
        self.key
            .iter()
            .map(|&i| quote(&self.cols[i].name))
            .collect()
    }

    /// `(k1, k2) > (v1, v2)` expanded so both optimisers use the primary key for the range.
    fn gt(names: &[String], key: &Key) -> String {
        let mut ors = Vec::new();
        for i in 0..names.len() {
            let mut ands: Vec<String> = (0..i)
                .map(|j| format!("{} = {}", names[j], key[j]))
                .collect();
            ands.push(format!("{} > {}", names[i], key[i]));
            ors.push(format!("({})", ands.join(" AND ")));
        }
        format!("({})", ors.join(" OR "))
    }

    fn range_where(names: &[String], r: &Range) -> String {
        let mut w = Vec::new();
        if let Some(lo) = &r.lo {
            w.push(Self::gt(names, lo));
        }
        if let Some(hi) = &r.hi {
            w.push(format!("NOT {}", Self::gt(names, hi)));
        }
        if w.is_empty() {
            "TRUE".into()
        } else {
            w.join(" AND ")
        }
    }

    fn keys_where(names: &[String], keys: &[Key]) -> String {
        if keys.is_empty() {
            return "FALSE".into();
        }
        let tuples: Vec<String> = keys
            .iter()
            .map(|k| {
                let v: Vec<String> = k.iter().map(|x| x.to_string()).collect();
                format!("({})", v.join(", "))
            })
            .collect();
        format!("({}) IN ({})", names.join(", "), tuples.join(", "))
    }

    /// Source: the key `n` rows after `lo` (the next chunk's inclusive upper bound).
    pub fn my_next_bound(&self, lo: Option<&Key>, n: u64) -> String {
        let names = self.key_names(my_ident);
        let w = lo
            .map(|k| Self::gt(&names, k))
            .unwrap_or_else(|| "TRUE".into());
        format!(
            "SELECT {k} FROM {t} WHERE {w} ORDER BY {k} LIMIT 1 OFFSET {off}",
            k = names.join(", "),
            t = self.my_table,
            off = n.saturating_sub(1)
        )
    }

    // The row hash is the first 64 bits of MD5 of the row text (every column's piece followed
    // by `,`, `canon::Piece`); a chunk's digest is `(count, XOR of the row hashes)`. The server
    // computes it whole when it can make every piece; otherwise it sends the row text in
    // segments around the columns made in Rust, and the client hashes exactly the same bytes.

    /// The selected expressions of a digest finished in Rust: consecutive SQL pieces joined
    /// into one text, and the raw value of each column made in Rust.
    fn segments(
        &self,
        piece: fn(&ColPlan) -> &Option<String>,
        raw: fn(&ColPlan) -> &String,
        concat: fn(&[String]) -> String,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut run: Vec<String> = Vec::new();
        for c in &self.cols {
            match piece(c) {
                Some(p) => run.push(p.clone()),
                None => {
                    if !run.is_empty() {
                        out.push(concat(&run));
                        run.clear();
                    }
                    out.push(raw(c).clone());
                }
            }
        }
        if !run.is_empty() {
            out.push(concat(&run));
        }
        out
    }

    // A segment is its pieces each followed by `,`. The pieces are never NULL, so `CONCAT_WS`
    // with a last empty argument writes exactly that, with half the arguments of `CONCAT`.
    fn my_concat(pieces: &[String]) -> String {
        format!("CONCAT_WS(',', {}, '')", pieces.join(", "))
    }

    fn pg_concat(pieces: &[String]) -> String {
        format!("concat_ws(',', {}, '')", pieces.join(", "))
    }

    /// Source digest of a range: one row `(count, xor)` computed by the server, or, when
    /// [`Self::my_parts`] is not empty, one row per source row with those values.
    pub fn my_digest(&self, r: &Range) -> String {
        let w = Self::range_where(&self.key_names(my_ident), r);
        let segs = self.segments(|c| &c.my_piece, |c| &c.my, Self::my_concat);
        if self.my_parts.is_empty() {
            format!(
                "SELECT COUNT(*), COALESCE(BIT_XOR(CAST(CONV(LEFT({}, 16), 16, 10) AS UNSIGNED)), 0) FROM {} WHERE {w}",
                self.hash.my_hex(&segs.join(", ")),
                self.my_table
            )
        } else {
            format!(
                "SELECT {} FROM {} WHERE {w}",
                segs.join(", "),
                self.my_table
            )
        }
    }

    /// Warehouse digest of a range over the live (not soft-deleted) rows: `(count, xor)`, or,
    /// when [`Self::pg_parts`] is not empty, one row per warehouse row like [`Self::my_digest`].
    pub fn pg_digest(&self, r: &Range) -> String {
        let w = Self::range_where(&self.key_names(pg_ident), r);
        let segs = self.segments(|c| &c.pg_piece, |c| &c.pg, Self::pg_concat);
        if self.pg_parts.is_empty() {
            format!(
                "SELECT count(*)::bigint, coalesce(bit_xor(('x' || left({}, 16))::bit(64)::bigint), 0)::bigint FROM {} WHERE ({w}) AND NOT _cdc_deleted",
                self.hash.pg_hex(&segs.join(", ")),
                self.pg_table
            )
        } else {
            format!(
                "SELECT {} FROM {} WHERE ({w}) AND NOT _cdc_deleted",
                segs.join(", "),
                self.pg_table
            )
        }
    }

    fn my_rows(&self, w: &str) -> String {
        let names = self.key_names(my_ident);
        let vals: Vec<String> = self.cols.iter().map(|c| c.my.clone()).collect();
        format!(
            "SELECT {k}, {v} FROM {t} WHERE {w} ORDER BY {k}",
            k = names.join(", "),
            v = vals.join(", "),
            t = self.my_table
        )
    }

    fn pg_rows(&self, w: &str) -> String {
        let names = self.key_names(pg_ident);
        let ks: Vec<String> = names.iter().map(|k| format!("{k}::text")).collect();
        let vals: Vec<String> = self.cols.iter().map(|c| c.pg.clone()).collect();
        format!(
            "SELECT {ks}, {v}, _cdc_deleted, _cdc_version::text FROM {t} WHERE {w} ORDER BY {k}",
            ks = ks.join(", "),
            v = vals.join(", "),
            t = self.pg_table,
            k = names.join(", ")
        )
    }

    /// Source rows of a range, canonical values per column (drill-down).
    pub fn my_rows_in(&self, r: &Range) -> String {
        self.my_rows(&Self::range_where(&self.key_names(my_ident), r))
    }

    /// Warehouse rows of a range, including soft-deleted ones (drill-down).
    pub fn pg_rows_in(&self, r: &Range) -> String {
        self.pg_rows(&Self::range_where(&self.key_names(pg_ident), r))
    }

    /// Source rows with the given keys (re-check).
    pub fn my_rows_for(&self, keys: &[Key]) -> String {
        self.my_rows(&Self::keys_where(&self.key_names(my_ident), keys))
    }

    /// Warehouse rows with the given keys (re-check).
    pub fn pg_rows_for(&self, keys: &[Key]) -> String {
        self.pg_rows(&Self::keys_where(&self.key_names(pg_ident), keys))
    }

    /// `WHERE` text selecting the given keys at the source (repair).
    pub fn my_keys_where(&self, keys: &[Key]) -> String {
        Self::keys_where(&self.key_names(my_ident), keys)
    }

    /// The key as the change-event key JSON (`{"id":7}`), byte-identical to `cdc_event::key_json`.
    pub fn key_json(&self, key: &Key) -> String {
        let mut m = serde_json::Map::new();
        for (n, &i) in self.key.iter().enumerate() {
            m.insert(self.cols[i].name.clone(), int_json(key[n]));
        }
        cdc_event::key_json(&self.schema.primary_key, &m).unwrap_or_default()
    }
}

/// An integer as a JSON number (u64 above i64's range).
pub fn int_json(v: i128) -> serde_json::Value {
    if let Ok(x) = i64::try_from(v) {
        serde_json::Value::from(x)
    } else if let Ok(x) = u64::try_from(v) {
        serde_json::Value::from(x)
    } else {
        serde_json::Value::String(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_event::ColumnSchema;

    fn plan() -> TablePlan {
        let schema = TableSchema {
            columns: vec![
                ColumnSchema {
                    name: "a".into(),
                    ty: ColumnType::Int { unsigned: false },
                    nullable: false,
                },
                ColumnSchema {
                    name: "b".into(),
                    ty: ColumnType::BigInt { unsigned: true },
                    nullable: false,
                },
                ColumnSchema {
                    name: "j".into(),
                    ty: ColumnType::Json,
                    nullable: true,
                },
            ],
            primary_key: vec!["a".into(), "b".into()],
        };
        let pg: HashMap<String, String> = [
            ("a", "int4"),
            ("b", "numeric"),
            ("j", "jsonb"),
            ("_cdc_version", "numeric"),
            ("_cdc_deleted", "bool"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        TablePlan::new(TableId::new("shop", "t"), schema, "w", &pg, Flavor::Mariadb).unwrap()
    }

    #[test]
    fn composite_ranges_expand_for_the_optimiser() {
        let p = plan();
        let r = Range {
            lo: Some(vec![1, 2]),
            hi: Some(vec![3, 4]),
        };
        let sql = p.my_rows_in(&r);
        assert!(
            sql.contains(
                "((`a` > 1) OR (`a` = 1 AND `b` > 2)) AND NOT ((`a` > 3) OR (`a` = 3 AND `b` > 4))"
            ),
            "{sql}"
        );
        assert!(p
            .pg_digest(&Range::default())
            .contains("WHERE (TRUE) AND NOT _cdc_deleted"));
        assert!(p
            .my_rows_for(&[vec![1, 2], vec![5, 6]])
            .contains("(`a`, `b`) IN ((1, 2), (5, 6))"));
        assert_eq!(
            p.key_json(&vec![-1, 18446744073709551615]),
            r#"{"a":-1,"b":18446744073709551615}"#
        );
    }

    #[test]
    fn text_keys_and_missing_columns_are_refused() {
        let schema = TableSchema {
            columns: vec![ColumnSchema {
                name: "k".into(),
                ty: ColumnType::Text { max_len: None },
                nullable: false,
            }],
            primary_key: vec!["k".into()],
        };
        let pg: HashMap<String, String> = [
            ("k", "text"),
            ("_cdc_version", "numeric"),
            ("_cdc_deleted", "bool"),
        ]
        .into_iter()
        .map(|(a, b)| (a.into(), b.into()))
        .collect();
        let e = TablePlan::new(
            TableId::new("d", "t"),
            schema.clone(),
            "w",
            &pg,
            Flavor::Mysql,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("integer primary keys"), "{e}");
        let e = TablePlan::new(
            TableId::new("d", "t"),
            schema,
            "w",
            &HashMap::new(),
            Flavor::Mysql,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
