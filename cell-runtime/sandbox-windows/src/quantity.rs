//! Kubernetes resource quantities as a sandbox limit takes them: memory in bytes with
//! binary or decimal suffixes, CPU in cores or millicores, exact, with fractions of a
//! byte or millicore rounded up as Kubernetes does.
//!
//! Std only and Rust 1.63: this file is also compiled into `cellbus-contracts` (by
//! `#[path]`), so the CRD's validation and both sandboxes read a quantity the same way.

/// Why a quantity gives no number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityFault {
    /// Not a quantity of that kind at all.
    Malformed,
    /// More than 64 bits hold.
    Overflow,
}

/// Bytes in a memory quantity: `[0-9]+(\.[0-9]+)?` with an optional `Ki Mi Gi Ti k M G T`
/// suffix.
pub fn memory_bytes(text: &str) -> Result<u64, QuantityFault> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(QuantityFault::Malformed),
    };
    scaled(number, multiplier)
}

/// Millicores in a CPU quantity: cores with up to three decimals (`0.25`, `2`) or whole
/// millicores (`250m`).
pub fn cpu_millis(text: &str) -> Result<u64, QuantityFault> {
    match text.strip_suffix('m') {
        Some(millis) if !millis.contains('.') => scaled(millis, 1),
        Some(_) => Err(QuantityFault::Malformed),
        None => {
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            if decimals > 3 {
                return Err(QuantityFault::Malformed);
            }
            scaled(text, 1_000)
        }
    }
}

/// `number × multiplier` for a plain decimal `number`, exact, fractions rounded up.
fn scaled(number: &str, multiplier: u64) -> Result<u64, QuantityFault> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(QuantityFault::Malformed);
    }
    // Leading zeros do not make a number larger.
    let whole = whole.trim_start_matches('0');
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| QuantityFault::Overflow)?
    };
    let mut value = whole
        .checked_mul(multiplier)
        .ok_or(QuantityFault::Overflow)?;
    // Digits past the nineteenth cannot change a u64 count of bytes or millicores by more
    // than rounding up, which the `any` below keeps.
    let kept = &fraction[..fraction.len().min(19)];
    if !kept.is_empty() {
        let scale = 10u128.pow(kept.len() as u32);
        let numerator =
            kept.parse::<u128>().map_err(|_| QuantityFault::Malformed)? * u128::from(multiplier);
        let mut part = numerator / scale;
        let dropped_nonzero = fraction[kept.len()..].bytes().any(|b| b != b'0');
        if numerator % scale != 0 || dropped_nonzero {
            part += 1;
        }
        let part = u64::try_from(part).map_err(|_| QuantityFault::Overflow)?;
        value = value.checked_add(part).ok_or(QuantityFault::Overflow)?;
    }
    Ok(value)
}
