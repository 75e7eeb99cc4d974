//! Kubernetes resource quantities ("500m", "16", "64Gi", "1e3").
//!
//! Pool flags and pod requests are written as quantities; the autoscaler compares them, so it
//! needs them as numbers. Only what fit checks need is here: a quantity's value in base units.

/// The value of a quantity in its base unit (cores for cpu, bytes for memory), or None when the
/// text is not a quantity.
pub fn parse(text: &str) -> Option<f64> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    // Split the numeric part from the suffix.
    let split =
        s.char_indices().find(|&(_, c)| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).map(|(i, _)| i).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            // Decimal exponent form: 1e3, 1E-3.
            let exp = other.strip_prefix('e').or_else(|| other.strip_prefix('E'))?;
            10f64.powi(exp.parse::<i32>().ok()?)
        }
    };
    Some(number * multiplier)
}

/// Cpu in millicores, rounded up like the scheduler does.
pub fn cpu_millis(text: &str) -> Option<u64> {
    parse(text).map(|v| (v * 1000.0).ceil().max(0.0) as u64)
}

/// Memory (or any other byte count) in bytes, rounded up.
pub fn bytes(text: &str) -> Option<u64> {
    parse(text).map(|v| v.ceil().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_values() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("0.1"), Some(100));
        assert_eq!(cpu_millis("abc"), None);
        assert_eq!(cpu_millis(""), None);
    }

    #[test]
    fn memory_values() {
        assert_eq!(bytes("64Gi"), Some(64 * 1024 * 1024 * 1024));
        assert_eq!(bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        assert_eq!(bytes("12Xi"), None);
    }
}
