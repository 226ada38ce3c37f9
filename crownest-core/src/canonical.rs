//! Canonical JSON: RFC 8785, the JSON Canonicalization Scheme (JCS).
//!
//! Every hash and signature of CrowNest is taken over these bytes (the event chain, the
//! Evidence Bundle's digest, the in-toto Statement inside a DSSE envelope), so that any
//! RFC 8785 implementation (the `rfc8785` Python package, `serde_jcs`, the reference
//! implementations) reproduces them. The rules, for the JSON that CrowNest writes:
//!
//! * no whitespace; object members sorted by their names compared as arrays of **UTF-16
//!   code units** (which differs from byte order only when a name mixes characters outside
//!   the Basic Multilingual Plane with characters U+E000..U+FFFF);
//! * strings escape `"` and `\`, and control characters below U+0020 as `\b \t \n \f \r`
//!   or `\u00xx` (lowercase hex); nothing else is escaped (serde_json's string writer
//!   does exactly this);
//! * numbers are printed as ECMAScript does (`Number.prototype.toString`): an integer of
//!   magnitude below 2^53 as its decimal digits, any other number through the shortest
//!   round-tripping double (`ryu-js`). CrowNest itself only writes integers below 2^53.
//!
//! [`legacy_json`] keeps the byte-order variant that `crownest.evidence/v1` and `v1.1`
//! bundle digests were computed with, so those bundles keep verifying.

use std::cmp::Ordering;
use std::io::{self, Write};

use serde_json::{Number, Value};

/// Largest integer magnitude that an IEEE 754 double holds exactly, plus one: 2^53.
const EXACT_INTEGER_LIMIT: u64 = 1 << 53;

/// The RFC 8785 canonical form of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write(value, &mut out);
    out
}

/// Writes the RFC 8785 canonical form of `value` into `out` (strings and numbers go
/// straight to `out`, with no intermediate `String`).
pub fn write<W: Write>(value: &Value, out: &mut W) -> io::Result<()> {
    write_with(value, out, utf16_order)
}

/// The canonical form that `crownest.evidence/v1` and `v1.1` digests used: as RFC 8785
/// but with member names sorted by UTF-8 bytes. Only for verifying those old bundles.
pub fn legacy_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = write_with(value, &mut out, |a, b| a.cmp(b));
    out
}

/// RFC 8785 §3.2.3: member names compare as arrays of UTF-16 code units.
fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_with<W: Write>(
    value: &Value,
    out: &mut W,
    order: fn(&str, &str) -> Ordering,
) -> io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| order(a.0, b.0));
            out.write_all(b"{")?;
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_with(v, out, order)?;
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_with(item, out, order)?;
            }
            out.write_all(b"]")
        }
        Value::Number(n) => write_number(n, out),
        leaf => Ok(serde_json::to_writer(&mut *out, leaf)?),
    }
}

/// ECMAScript `Number.prototype.toString` of the number's double value.
fn write_number<W: Write>(n: &Number, out: &mut W) -> io::Result<()> {
    if let Some(u) = n.as_u64()
        && u < EXACT_INTEGER_LIMIT
    {
        return write!(out, "{u}");
    }
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() < EXACT_INTEGER_LIMIT
    {
        return write!(out, "{i}");
    }
    // A large integer or a fraction: the value as a double, printed as ECMAScript does.
    let f = n.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        // Both zeros print as "0".
        return out.write_all(b"0");
    }
    let mut buf = ryu_js::Buffer::new();
    out.write_all(buf.format_finite(f).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jcs(v: &Value) -> String {
        String::from_utf8(to_vec(v)).unwrap_or_default()
    }

    /// RFC 8785 §3.2.2: the example of §3.2.2 (strings, literals, numbers).
    #[test]
    fn rfc8785_section_3_2_2_example() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap_or(Value::Null);
        let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        assert_eq!(jcs(&v), expected);
    }

    /// RFC 8785 §3.2.3: sorting by UTF-16 code units.
    #[test]
    fn rfc8785_section_3_2_3_sorting() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let v: Value = serde_json::from_str(input).unwrap_or(Value::Null);
        let order: Vec<String> = {
            let s = jcs(&v);
            let back: serde_json::Map<String, Value> = serde_json::from_str(&s).unwrap_or_default();
            // serde_json's Map re-sorts; read the order from the text instead.
            let mut names: Vec<(usize, String)> = back
                .values()
                .filter_map(|x| x.as_str())
                .map(|name| (s.find(name).unwrap_or(usize::MAX), name.to_owned()))
                .collect();
            names.sort();
            names.into_iter().map(|(_, n)| n).collect()
        };
        assert_eq!(
            order,
            [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh",
            ]
        );
    }

    /// RFC 8785 Appendix B: number serialization samples (IEEE 754 bit patterns).
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            let f = f64::from_bits(*bits);
            let n = Number::from_f64(f).unwrap_or_else(|| Number::from(0));
            assert_eq!(jcs(&Value::Number(n)), *want, "bits {bits:#018x}");
        }
    }

    #[test]
    fn integers_print_as_integers_and_large_ones_as_doubles() {
        assert_eq!(
            jcs(&json!([0, 1, -1, 9007199254740991u64])),
            "[0,1,-1,9007199254740991]"
        );
        assert_eq!(jcs(&json!(-9007199254740991i64)), "-9007199254740991");
        // 2^53 + 1 is not a double: ECMAScript prints the nearest one.
        assert_eq!(jcs(&json!(9007199254740993u64)), "9007199254740992");
        assert_eq!(jcs(&json!(u64::MAX)), "18446744073709552000");
    }

    #[test]
    fn legacy_order_differs_only_for_astral_names() {
        let v = json!({"\u{1F600}": 1, "\u{FB33}": 2, "a": 3});
        assert_eq!(jcs(&v), "{\"a\":3,\"\u{1F600}\":1,\"\u{FB33}\":2}");
        let legacy = String::from_utf8(legacy_json(&v)).unwrap_or_default();
        assert_eq!(legacy, "{\"a\":3,\"\u{FB33}\":2,\"\u{1F600}\":1}");
    }
}
