//! Deterministic order rows, rendered as SQL literals.
//!
//! Values are rendered as literals (text protocol) rather than bound parameters because one
//! multi-row `INSERT` of 1,000 rows would need 15,000 placeholders and a prepared statement per
//! batch size; literal rendering goes through `mysql_common`'s escaping (`Value::as_sql`), so any
//! text, including the non-ASCII addresses, is quoted correctly.

use mysql_async::Value;

use crate::rng::Rng;

/// Shipping addresses in several scripts: accents, German sharp s, CJK, Hangul, Cyrillic and
/// 4-byte emoji, so every consumer of the stream must handle full UTF-8 (`utf8mb4`).
const ADDRESSES: [&str; 10] = [
    "Rue de l'Église {n}, 75004 Paris",
    "Straße der Einheit {n}, 80331 München",
    "東京都渋谷区神南1-{n}-3",
    "서울특별시 강남구 테헤란로 {n}",
    "Москва, ул. Тверская, д. {n}",
    "Av. Paulista {n}, São Paulo 🚚",
    "Bahnhofstrasse {n}, 8001 Zürich 🏠",
    "{n} Main St, Springfield, IL 62701",
    "北京市朝阳区建国路{n}号 📦",
    "Calle Mayor {n}, 28013 Madrid — 2º izq.",
];

const NOTES: [&str; 6] = [
    "Leave at the door.",
    "Geschenkverpackung, bitte 🎁",
    "配達前に電話してください",
    "Fragile — handle with care",
    "Ring twice; the bell is broken.",
    "Ne pas plier ✉️",
];

const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];
const CHANNELS: [&str; 4] = ["web", "ios", "android", "store"];
const COUPONS: [&str; 3] = ["SPRING10", "WELCOME5", "VIP20"];

/// Renders a string as an escaped SQL literal.
pub fn sql_str(s: &str) -> String {
    Value::from(s).as_sql(false)
}

/// Formats an amount in cents as a `DECIMAL(12,2)` literal, e.g. `1234` → `12.34`.
pub fn cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.abs() / 100, c.abs() % 100)
}

/// The money columns of one order, in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub amount: i64,
    pub discount: i64,
    pub tax: i64,
}

/// A random order amount with a plausible discount and a 20% tax on the discounted amount.
pub fn money(rng: &mut Rng) -> Money {
    let amount = rng.range(500, 200_000);
    let discount = if rng.chance(0.3) {
        amount * rng.range(5, 20) / 100
    } else {
        0
    };
    let tax = (amount - discount) / 5;
    Money {
        amount,
        discount,
        tax,
    }
}

/// The parenthesised `VALUES` tuple of a new order with explicit id `id` and status `status`.
/// Column order is that of [`INSERT_COLUMNS`].
pub fn insert_tuple(rng: &mut Rng, id: u64, status: &str) -> String {
    let user_id = rng.range(1, 5_000_000);
    let m = money(rng);
    let currency = rng.pick(&CURRENCIES);
    let items = rng.range(1, 12);
    let mut attributes = serde_json::json!({
        "channel": rng.pick(&CHANNELS),
        "gift": rng.chance(0.1),
        "items": (0..items.min(3)).map(|i| serde_json::json!({
            "sku": format!("SKU-{:05}", rng.range(1, 99_999)),
            "qty": 1 + i % 2,
        })).collect::<Vec<_>>(),
    });
    if rng.chance(0.25) {
        attributes["coupon"] = serde_json::Value::from(*rng.pick(&COUPONS));
    }
    let address = rng
        .pick(&ADDRESSES)
        .replace("{n}", &rng.range(1, 999).to_string());
    let note = if rng.chance(0.4) {
        let text: &&str = rng.pick(&NOTES);
        sql_str(text)
    } else {
        "NULL".to_owned()
    };
    let paid_at = if matches!(status, "pending" | "cancelled") {
        "NULL"
    } else {
        "NOW(6)"
    };
    format!(
        "({id},{user_id},'{status}',{},{},{},'{currency}',{items},{},{},{note},NOW(6),{paid_at},NOW(6),1)",
        cents(m.amount),
        cents(m.discount),
        cents(m.tax),
        sql_str(&attributes.to_string()),
        sql_str(&address),
    )
}

/// The column list matching [`insert_tuple`].
pub const INSERT_COLUMNS: &str = "(id,user_id,status,amount,discount,tax,currency,item_count,attributes,shipping_address,note,created_at,paid_at,updated_time,version)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_formatting() {
        for (c, s) in [
            (0, "0.00"),
            (5, "0.05"),
            (1234, "12.34"),
            (-150, "-1.50"),
            (100_000_000, "1000000.00"),
        ] {
            assert_eq!(cents(c), s);
        }
    }

    #[test]
    fn tuples_are_deterministic_and_quote_text() {
        let a = insert_tuple(&mut Rng::new(1), 10, "pending");
        let b = insert_tuple(&mut Rng::new(1), 10, "pending");
        assert_eq!(a, b);
        assert!(a.starts_with("(10,"));
        assert!(a.ends_with(",NOW(6),NULL,NOW(6),1)"), "{a}");
        // The apostrophe of "l'Église" must be escaped, never end the literal.
        assert_eq!(sql_str("l'Église"), "'l\\'Église'");
    }

    #[test]
    fn money_is_consistent() {
        let mut r = Rng::new(9);
        for _ in 0..1000 {
            let m = money(&mut r);
            assert!(m.amount >= 500 && m.discount >= 0 && m.discount < m.amount);
            assert_eq!(m.tax, (m.amount - m.discount) / 5);
        }
    }
}
