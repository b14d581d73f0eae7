//! The subset of Kubernetes resource quantities a sandbox limit takes: memory in bytes
//! with binary or decimal suffixes, CPU in cores or millicores. The patterns go into the
//! CRD schema; the parsers turn accepted strings into numbers for comparison.

/// Memory quantity: a number with an optional `Ki Mi Gi Ti k M G T` suffix.
pub const MEMORY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$";
/// CPU quantity: cores with up to three decimals, or whole millicores (`250m`).
pub const CPU_PATTERN: &str = r"^([0-9]+(\.[0-9]{1,3})?|[0-9]+m)$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("`{0}` is not a memory quantity such as 64Mi or 1Gi")]
    Memory(String),
    #[error("`{0}` is not a CPU quantity such as 500m or 2")]
    Cpu(String),
}

/// The parsers, shared with the Windows sandbox, which builds alone with no dependency.
#[path = "../../cell-runtime/sandbox-windows/src/quantity.rs"]
mod parse;

/// Bytes in a memory quantity.
pub fn memory_bytes(text: &str) -> Result<u64, QuantityError> {
    parse::memory_bytes(text).map_err(|_| QuantityError::Memory(text.to_owned()))
}

/// Millicores in a CPU quantity.
pub fn cpu_millis(text: &str) -> Result<u64, QuantityError> {
    parse::cpu_millis(text).map_err(|_| QuantityError::Cpu(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("64Mi", 64 << 20)]
    #[case("1Gi", 1 << 30)]
    #[case("1.5Gi", 3 << 29)]
    #[case("128", 128)]
    #[case("2k", 2_000)]
    #[case("1M", 1_000_000)]
    fn memory_quantities_parse_to_bytes(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(memory_bytes(text), Ok(bytes));
    }

    #[rstest]
    #[case("500m", 500)]
    #[case("2", 2_000)]
    #[case("0.25", 250)]
    #[case("1.125", 1_125)]
    fn cpu_quantities_parse_to_millicores(#[case] text: &str, #[case] millis: u64) {
        assert_eq!(cpu_millis(text), Ok(millis));
    }

    #[rstest]
    #[case::empty("")]
    #[case::unit_only("Mi")]
    #[case::unknown_suffix("64MB")]
    #[case::negative("-1Mi")]
    #[case::overflow("99999999999999999999Ti")]
    fn malformed_memory_is_refused(#[case] text: &str) {
        assert_eq!(memory_bytes(text), Err(QuantityError::Memory(text.into())));
    }

    #[rstest]
    #[case::fractional_millis("1.5m")]
    #[case::too_precise("0.0001")]
    #[case::word("lots")]
    fn malformed_cpu_is_refused(#[case] text: &str) {
        assert_eq!(cpu_millis(text), Err(QuantityError::Cpu(text.into())));
    }
}
