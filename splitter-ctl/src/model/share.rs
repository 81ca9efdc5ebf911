//! Percentages of new connections, as operators type them ("10", "0.5", "99.99"), and basis
//! points, as the split word holds them.

use splitter_common::split::FULL_SHARE_BP;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("`{0}` is not a percentage: expected a number from 0 to 100 with at most two decimals")]
    NotAPercentage(String),
    #[error("`{0}` is out of range: a share is from 0 to 100 percent")]
    OutOfRange(String),
}

/// Parses a percentage with at most two decimals into basis points.
pub fn parse_percent(text: &str) -> Result<u16, ShareError> {
    let not_a_percentage = || ShareError::NotAPercentage(text.to_owned());
    let trimmed = text.trim().trim_end_matches('%');
    let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    if trimmed.ends_with('.') {
        return Err(not_a_percentage());
    }
    if whole.is_empty()
        || fraction.len() > 2
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(not_a_percentage());
    }
    let whole: u32 = whole
        .parse()
        .map_err(|_| ShareError::OutOfRange(text.to_owned()))?;
    let hundredths: u32 = format!("{fraction:0<2}")
        .parse()
        .map_err(|_| not_a_percentage())?;
    let bp = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(hundredths))
        .ok_or_else(|| ShareError::OutOfRange(text.to_owned()))?;
    u16::try_from(bp)
        .ok()
        .filter(|bp| *bp <= FULL_SHARE_BP)
        .ok_or_else(|| ShareError::OutOfRange(text.to_owned()))
}

/// Basis points as a percentage (`1250` → `12.5`).
#[must_use]
pub fn percent_of(bp: u16) -> f64 {
    f64::from(bp) / 100.0
}

/// Basis points as a percentage with two decimals, without trailing zeros ("12.5", "100").
#[must_use]
pub fn format_percent(bp: u16) -> String {
    let text = format!("{}.{:02}", bp / 100, bp % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_with_up_to_two_decimals_become_basis_points() {
        assert_eq!(parse_percent("0"), Ok(0));
        assert_eq!(parse_percent("10"), Ok(1_000));
        assert_eq!(parse_percent("0.01"), Ok(1));
        assert_eq!(parse_percent("12.5"), Ok(1_250));
        assert_eq!(parse_percent("99.99%"), Ok(9_999));
        assert_eq!(parse_percent("100"), Ok(10_000));
    }

    #[test]
    fn malformed_or_out_of_range_percentages_are_refused() {
        for bad in ["", "-1", "1.234", "ten", "1e2", ".5", "5.", "1.-1"] {
            assert!(
                matches!(parse_percent(bad), Err(ShareError::NotAPercentage(_))),
                "{bad}"
            );
        }
        for bad in ["100.01", "101", "99999999999999"] {
            assert!(
                matches!(parse_percent(bad), Err(ShareError::OutOfRange(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn formatting_drops_trailing_zeros() {
        assert_eq!(format_percent(0), "0");
        assert_eq!(format_percent(1_250), "12.5");
        assert_eq!(format_percent(1), "0.01");
        assert_eq!(format_percent(10_000), "100");
    }
}
