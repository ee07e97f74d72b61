//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`) as integers.
//!
//! A quantity is a signed decimal number followed by one suffix: a binary SI one (`Ki` ..
//! `Ei`), a decimal SI one (`n`, `u`, `m`, none, `k`, `M` .. `E`) or a decimal exponent
//! (`e3`, `E-2`). It is parsed exactly (no floating point), then read out as whole units
//! ([`Quantity::value`], bytes for memory) or thousandths ([`Quantity::milli`], millicores
//! for cpu). Like `resource.Quantity`'s `Value()` and `MilliValue()`, both round up, so
//! `0.1m` cpu asks for one millicore, never zero, and both saturate at `i64` bounds rather
//! than wrap.
//!
//! Invariant: `mantissa × 10^exp10 × 2^exp2` is the quantity's value, exactly, or (when
//! `dropped` is set) short of it by less than one unit of the mantissa's last digit.

use std::fmt;

/// The bound on a decimal exponent we evaluate; anything larger saturates (1e40 bytes is no
/// node's memory, and keeping it small keeps the arithmetic in `i128`).
const MAX_EXP10: i32 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("quantity is empty")]
    Empty,
    /// The text does not start with a number (`abc`, `.`, `--1`).
    #[error("quantity {0:?} does not start with a number")]
    Number(String),
    /// The number is followed by something that is no suffix (`10mb`, `1Kib`).
    #[error("quantity {text:?} has an unknown suffix {suffix:?}")]
    Suffix { text: String, suffix: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An exactly parsed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
    /// Non-zero digits past the 31st were dropped: the magnitude is a little more.
    dropped: bool,
}

/// Parses `text` as a Kubernetes quantity.
pub fn parse(text: &str) -> Result<Quantity> {
    Quantity::parse(text)
}

// === impl Quantity ===

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity> {
        if text.is_empty() {
            return Err(Error::Empty);
        }
        let bad_number = || Error::Number(text.to_string());
        let (negative, rest) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        // Digits, an optional point, more digits; at least one digit in all.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, suffix) = match after_int.strip_prefix('.') {
            Some(after_point) => {
                let n = after_point.bytes().take_while(u8::is_ascii_digit).count();
                after_point.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad_number());
        }
        let mut mantissa: i128 = 0;
        let mut exp10: i32 = 0;
        let mut dropped = false;
        for d in int_part.bytes().chain(frac_part.bytes()) {
            // Past 31 significant digits the rest can only nudge a rounding: keep the
            // magnitude through the exponent, and whether anything was lost, instead of
            // overflowing.
            if mantissa >= 10i128.pow(30) {
                exp10 += 1;
                dropped |= d != b'0';
                continue;
            }
            mantissa = mantissa * 10 + i128::from(d - b'0');
        }
        exp10 -= frac_part.len() as i32;
        let (s10, s2) = suffix_exponents(suffix).ok_or_else(|| Error::Suffix {
            text: text.to_string(),
            suffix: suffix.to_string(),
        })?;
        Ok(Quantity {
            mantissa: if negative { -mantissa } else { mantissa },
            exp10: exp10.saturating_add(s10),
            exp2: s2,
            dropped,
        })
    }

    /// Whole units, rounded up (memory and storage in bytes, pod counts).
    pub fn value(&self) -> i64 {
        self.scaled(0)
    }

    /// Thousandths of a unit, rounded up (cpu in millicores).
    pub fn milli(&self) -> i64 {
        self.scaled(3)
    }

    /// `ceil(self × 10^extra)`, saturated to `i64`.
    fn scaled(&self, extra: i32) -> i64 {
        if self.mantissa == 0 {
            return 0;
        }
        let saturated = if self.mantissa < 0 {
            i64::MIN
        } else {
            i64::MAX
        };
        let Some(n) = 1i128
            .checked_shl(self.exp2)
            .and_then(|p| self.mantissa.checked_mul(p))
        else {
            return saturated;
        };
        let e = self.exp10.saturating_add(extra);
        let exact = if e >= 0 {
            if e > MAX_EXP10 {
                return saturated;
            }
            n.checked_mul(10i128.pow(e as u32))
        } else if e < -38 {
            // 10^39 is past i128; and |n| < 10^39, so what is left is a sliver.
            // A positive sliver still rounds up to one unit.
            Some(if n > 0 { 1 } else { 0 })
        } else {
            let d = 10i128.pow(e.unsigned_abs());
            // Round towards positive infinity, as resource.Quantity does. Dropped digits
            // make a positive value a little larger and a negative one a little smaller.
            let q = n.div_euclid(d);
            let exact = n.rem_euclid(d) == 0 && !(self.dropped && n > 0);
            Some(if exact { q } else { q + 1 })
        };
        match exact {
            Some(v) => i64::try_from(v).unwrap_or(saturated),
            None => saturated,
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}e{}", self.mantissa, self.exp10)?;
        if self.exp2 > 0 {
            write!(f, "*2^{}", self.exp2)?;
        }
        Ok(())
    }
}

/// The powers of ten and two a suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i32, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // A long exponent only saturates; clamp it so the sum cannot overflow.
            let e: i64 = exp.parse().ok().unwrap_or(if exp.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            });
            (e.clamp(-1000, 1000) as i32, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        // (text, value(), milli())
        let cases: &[(&str, i64, i64)] = &[
            ("0", 0, 0),
            ("1", 1, 1000),
            ("100m", 1, 100),
            ("0.5", 1, 500),
            ("1.5", 2, 1500),
            ("250m", 1, 250),
            ("0.1m", 1, 1),
            ("2500u", 1, 3),
            ("1n", 1, 1),
            ("128Mi", 134_217_728, 134_217_728_000),
            ("2Ki", 2048, 2_048_000),
            ("1.5Gi", 1_610_612_736, 1_610_612_736_000),
            ("1G", 1_000_000_000, 1_000_000_000_000),
            ("1k", 1000, 1_000_000),
            ("1e3", 1000, 1_000_000),
            ("1E3", 1000, 1_000_000),
            ("5e-3", 1, 5),
            ("1e+2", 100, 100_000),
            (".5", 1, 500),
            ("5.", 5, 5000),
            ("+3", 3, 3000),
            ("-1", -1, -1000),
            ("-0.5", 0, -500),
            ("110", 110, 110_000),
            ("8Ei", i64::MAX, i64::MAX),
            ("1e100", i64::MAX, i64::MAX),
            ("1e-100", 1, 1),
            ("1e-38", 1, 1),
            ("1e-39", 1, 1),
            ("1e-41", 1, 1),
            ("-1e-40", 0, 0),
            ("999999999999999999999999999999999999e-38", 1, 10),
            ("1000000000000000000000000000000000001e-36", 2, 1001),
            ("1000000000000000000000000000000000000e-36", 1, 1000),
            ("123456789012345678901234567890123", i64::MAX, i64::MAX),
        ];
        for &(text, value, milli) in cases {
            let q = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((q.value(), q.milli()), (value, milli), "{text}");
        }
    }

    /// Any text: an answer or an error, never a panic (overflow included).
    #[test]
    fn arbitrary_text_never_panics() {
        const ALPHABET: &[u8] = b"0123456789.+-eEkMGTPnumKi9 x";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut text = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..(seed >> 59) as usize + 1 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push(ALPHABET[(seed >> 33) as usize % ALPHABET.len()] as char);
            }
            if let Ok(q) = parse(&text) {
                let _ = (q.value(), q.milli());
            }
        }
        for text in [
            "9".repeat(400),
            format!("1e{}", "9".repeat(30)),
            format!("0.{}1", "0".repeat(5000)),
        ] {
            if let Ok(q) = parse(&text) {
                let _ = (q.value(), q.milli());
            }
        }
    }

    #[test]
    fn malformed_quantities_name_the_bad_text() {
        assert_eq!(parse(""), Err(Error::Empty));
        assert_eq!(parse("abc"), Err(Error::Number("abc".into())));
        assert_eq!(parse("."), Err(Error::Number(".".into())));
        assert_eq!(parse("--1"), Err(Error::Number("--1".into())));
        assert_eq!(
            parse("10mb"),
            Err(Error::Suffix {
                text: "10mb".into(),
                suffix: "mb".into()
            })
        );
        assert_eq!(
            parse("1Kib").unwrap_err().to_string(),
            "quantity \"1Kib\" has an unknown suffix \"Kib\""
        );
        assert!(parse("1e").is_err());
        assert!(parse("1e3.5").is_err());
        assert!(parse("1 Gi").is_err());
    }
}
