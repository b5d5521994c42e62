//! Kubernetes resource quantities (`128Mi`, `1G`, `1.5Gi`, `500m`, `1e3`).
//!
//! A quantity is kept as an exact fraction so that `1.5Gi` is exactly
//! 1610612736 bytes; conversions round up like Kubernetes' `Value()`. Byte
//! quantities refuse the sub-unit suffixes (`m`, `u`, `n`): `128m` is 0.128
//! bytes in Kubernetes, which is always a typo for `128Mi` in a VM spec.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;

/// A quantity as written in the spec: YAML and JSON allow both `1024` and
/// `"1024"`, so numbers are kept as their text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity such as 128Mi, 1Gi or 1073741824")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                if v.is_finite() {
                    Ok(Quantity(v.to_string()))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exact non-negative rational value `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    num: u128,
    den: u128,
}

/// Largest decimal exponent accepted (`1e30`); keeps the arithmetic in u128.
const MAX_EXPONENT: u32 = 30;
/// Longest digit string accepted; keeps the arithmetic in u128.
const MAX_DIGITS: usize = 30;

const SUFFIX_HELP: &str = "expected a number with an optional suffix: Ki, Mi, Gi, Ti, Pi, Ei \
     (powers of 1024), k, M, G, T, P, E (powers of 1000), or none (plain bytes)";

fn parse_exact(text: &str, allow_fraction_suffixes: bool) -> Result<Exact, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty quantity: {SUFFIX_HELP}"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(format!("invalid quantity {text:?}: {SUFFIX_HELP}"));
    }
    if int_part.len() + frac_part.len() > MAX_DIGITS {
        return Err(format!("invalid quantity {text:?}: too many digits"));
    }
    let digits = format!("{int_part}{frac_part}");
    let mut num: u128 = if digits.is_empty() {
        0
    } else {
        digits
            .parse()
            .map_err(|_| format!("invalid quantity {text:?}: {SUFFIX_HELP}"))?
    };
    // MAX_DIGITS bounds frac_part.len() well below u32::MAX.
    let mut den: u128 = 10u128.pow(frac_part.len() as u32);
    if negative && num != 0 {
        return Err(format!("invalid quantity {text:?}: must not be negative"));
    }
    let too_large = || format!("invalid quantity {text:?}: too large");
    let binary = |power: u32| 1024u128.pow(power);
    let decimal = |power: u32| 1000u128.pow(power);
    match suffix {
        "" => {}
        "Ki" => num = num.checked_mul(binary(1)).ok_or_else(too_large)?,
        "Mi" => num = num.checked_mul(binary(2)).ok_or_else(too_large)?,
        "Gi" => num = num.checked_mul(binary(3)).ok_or_else(too_large)?,
        "Ti" => num = num.checked_mul(binary(4)).ok_or_else(too_large)?,
        "Pi" => num = num.checked_mul(binary(5)).ok_or_else(too_large)?,
        "Ei" => num = num.checked_mul(binary(6)).ok_or_else(too_large)?,
        "k" => num = num.checked_mul(decimal(1)).ok_or_else(too_large)?,
        "M" => num = num.checked_mul(decimal(2)).ok_or_else(too_large)?,
        "G" => num = num.checked_mul(decimal(3)).ok_or_else(too_large)?,
        "T" => num = num.checked_mul(decimal(4)).ok_or_else(too_large)?,
        "P" => num = num.checked_mul(decimal(5)).ok_or_else(too_large)?,
        "E" => num = num.checked_mul(decimal(6)).ok_or_else(too_large)?,
        "m" | "u" | "n" if allow_fraction_suffixes => {
            let div = match suffix {
                "m" => 1_000,
                "u" => 1_000_000,
                _ => 1_000_000_000,
            };
            den = den.checked_mul(div).ok_or_else(too_large)?;
        }
        "m" | "u" | "n" => {
            let hint = if suffix == "m" {
                " (did you mean Mi or M?)"
            } else {
                ""
            };
            return Err(format!(
                "invalid quantity {text:?}: suffix {suffix:?} is a fraction of a byte{hint}; \
                 {SUFFIX_HELP}"
            ));
        }
        _ if suffix.starts_with(['e', 'E']) && suffix.len() > 1 => {
            let exp_text = &suffix[1..];
            let (neg_exp, digits) = match exp_text.as_bytes()[0] {
                b'-' => (true, &exp_text[1..]),
                b'+' => (false, &exp_text[1..]),
                _ => (false, exp_text),
            };
            let exp: u32 = digits
                .parse()
                .ok()
                .filter(|e| *e <= MAX_EXPONENT)
                .ok_or_else(|| {
                    format!(
                        "invalid quantity {text:?}: exponent must be an integer up to {MAX_EXPONENT}"
                    )
                })?;
            let factor = 10u128.pow(exp);
            if neg_exp {
                den = den.checked_mul(factor).ok_or_else(too_large)?;
            } else {
                num = num.checked_mul(factor).ok_or_else(too_large)?;
            }
        }
        other => {
            let hint = match other.to_ascii_lowercase().as_str() {
                "ki" | "kib" | "kb" => " (did you mean Ki?)",
                "mi" | "mib" | "mb" => " (did you mean Mi?)",
                "gi" | "gib" | "gb" => " (did you mean Gi?)",
                "ti" | "tib" | "tb" => " (did you mean Ti?)",
                _ => "",
            };
            return Err(format!(
                "invalid quantity {text:?}: unknown suffix {other:?}{hint}; {SUFFIX_HELP}"
            ));
        }
    }
    Ok(Exact { num, den })
}

/// Bytes of a memory or disk quantity, rounded up to a whole byte.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let v = parse_exact(text, false)?;
    let bytes = v.num.div_ceil(v.den);
    u64::try_from(bytes).map_err(|_| format!("invalid quantity {text:?}: too large"))
}

/// Whole CPUs of a CPU quantity (`500m` -> 1, `2` -> 2), rounded up like
/// KubeVirt does when it derives vCPUs from `resources`.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let v = parse_exact(text, true).map_err(|e| e.replace(SUFFIX_HELP, CPU_HELP))?;
    let cpus = v.num.div_ceil(v.den);
    u64::try_from(cpus).map_err(|_| format!("invalid quantity {text:?}: too large"))
}

const CPU_HELP: &str = "expected a number of CPUs such as 2 or 500m";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_quantities_follow_kubernetes_suffixes() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1024", 1024),
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("2Ti", 2 << 40),
            ("4Ki", 4096),
            ("1k", 1_000),
            ("1024M", 1_024_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1e3", 1_000),
            ("1E6", 1_000_000),
            ("1.5", 2),
            ("+5", 5),
            (" 64Mi ", 64 << 20),
            ("0.5Ki", 512),
            ("1Ei", 1 << 60),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn byte_quantities_reject_typos_with_a_hint() {
        let cases: &[(&str, &str)] = &[
            ("", "empty quantity"),
            ("1GB", "unknown suffix \"GB\" (did you mean Gi?)"),
            ("1mi", "did you mean Mi?"),
            ("128m", "fraction of a byte (did you mean Mi or M?)"),
            ("-1Gi", "must not be negative"),
            ("Gi", "invalid quantity \"Gi\""),
            ("abc", "invalid quantity \"abc\""),
            ("1e99", "exponent must be an integer up to 30"),
            ("100Ei", "too large"),
            ("1.2.3", "invalid quantity"),
            ("1e", "unknown suffix \"e\""),
        ];
        for (text, want) in cases {
            let err = parse_bytes(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn cpu_quantities_round_up_to_whole_cpus() {
        let cases: &[(&str, u64)] = &[("1", 1), ("500m", 1), ("2", 2), ("2.1", 3), ("1500m", 2)];
        for (text, want) in cases {
            assert_eq!(parse_cpus(text), Ok(*want), "{text}");
        }
        assert!(parse_cpus("2 cpus").unwrap_err().contains("number of CPUs"));
    }

    #[test]
    fn quantities_deserialize_from_numbers_and_strings() {
        let q: Quantity = serde_json::from_str("1024").unwrap();
        assert_eq!(q.0, "1024");
        let q: Quantity = serde_json::from_str("\"1Gi\"").unwrap();
        assert_eq!(q.0, "1Gi");
        assert!(serde_json::from_str::<Quantity>("true").is_err());
    }
}
