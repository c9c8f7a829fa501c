//! Exact decimals (PostgreSQL `numeric`, MySQL `DECIMAL`) as JSON a test can
//! compare: a whole number within 64 bits is an int, a number a double holds
//! exactly (as the same shortest decimal) is a float, anything else stays text so
//! no digit is lost. Public because the executor's WAL source reads `numeric`
//! columns as text and gives them the same JSON as a step's query does.

use serde_json::Value;

/// `text` (`-12.50`, `1e3` is not produced by either server) as JSON.
pub fn decimal(text: &str) -> Value {
    let t = text.trim();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", t.strip_prefix('+').unwrap_or(t)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let valid = !whole.is_empty() || !frac.is_empty();
    if !valid
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Value::String(text.to_string());
    }
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        if let Ok(n) =
            format!("{sign}{}", if whole.is_empty() { "0" } else { whole }).parse::<i64>()
        {
            return Value::from(n);
        }
    }
    let whole = whole.trim_start_matches('0');
    let canonical = format!(
        "{sign}{}{}{frac}",
        if whole.is_empty() { "0" } else { whole },
        if frac.is_empty() { "" } else { "." }
    );
    match canonical.parse::<f64>() {
        Ok(f) if f.is_finite() && format!("{f}") == canonical => Value::from(f),
        _ => Value::String(text.to_string()),
    }
}

/// A float as JSON; NaN and the infinities, which JSON has no numbers for, as the
/// text the servers print.
pub fn float(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".into())
    } else if f.is_infinite() {
        Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        Value::from(f)
    }
}

/// A single-precision float as the double with the same shortest decimal (`0.1`,
/// not `0.10000000149011612`).
pub fn float32(f: f32) -> Value {
    match format!("{f}").parse::<f64>() {
        Ok(d) => float(d),
        Err(_) => float(f64::from(f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals() {
        assert_eq!(decimal("30.00"), json!(30));
        assert_eq!(decimal("-0.00"), json!(0));
        assert_eq!(decimal("100000"), json!(100000));
        assert_eq!(decimal("12.5"), json!(12.5));
        assert_eq!(decimal("-0.0001"), json!(-0.0001));
        assert_eq!(decimal(".5"), json!(0.5));
        assert_eq!(
            decimal("123456789012345678901234567890"),
            json!("123456789012345678901234567890")
        );
        assert_eq!(
            decimal("0.12345678901234567890"),
            json!("0.12345678901234567890")
        );
        assert_eq!(decimal("NaN"), json!("NaN"));
        assert_eq!(decimal(""), json!(""));
    }

    #[test]
    fn floats() {
        assert_eq!(float32(0.1), json!(0.1));
        assert_eq!(float(f64::NAN), json!("NaN"));
        assert_eq!(float(f64::NEG_INFINITY), json!("-Infinity"));
    }
}
