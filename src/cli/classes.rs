//! Parsing class lists such as `3,5,10-19`.

/// Largest number of ids one range, and the whole list, may expand to.
const MAX_RANGE: i64 = 1_000_000;

/// Parses a comma-separated list of class ids and inclusive ranges (`3,5,10-19`, `-2,-1`).
///
/// Every refusal names the item it refuses.
pub fn parse_classes(spec: &str) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for item in spec.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty item in class list '{spec}'"));
        }
        // A range's '-' is any '-' after the first character (which may be a minus sign).
        // The first character may be several bytes long (e.g. '−', U+2212).
        let first = item.chars().next().map_or(0, char::len_utf8);
        let split = item[first..].find('-').map(|p| p + first);
        let parse = |s: &str| {
            let s = s.trim();
            s.parse::<i64>().map_err(|e| {
                let hint = if s.contains(['\u{2212}', '\u{2013}', '\u{2010}', '\u{2011}', '\u{2012}']) {
                    " (write the minus sign and range dash as ASCII '-')"
                } else if s.is_empty() {
                    " (it is empty)"
                } else {
                    match e.kind() {
                        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                            " (it is outside the 64-bit integer range)"
                        }
                        _ => "",
                    }
                };
                format!("'{s}' in class list item '{item}' is not an integer{hint}")
            })
        };
        match split {
            None => ids.push(parse(item)?),
            Some(p) => {
                let (lo, hi) = (parse(&item[..p])?, parse(&item[p + 1..])?);
                if lo > hi {
                    return Err(format!("class range '{item}' is empty (start > end)"));
                }
                // hi - lo overflows i64 for ranges wider than i64::MAX: such a range is too
                // long as well.
                if hi.checked_sub(lo).is_none_or(|span| span >= MAX_RANGE) {
                    return Err(format!("class range '{item}' holds more than {MAX_RANGE} ids"));
                }
                ids.extend(lo..=hi);
            }
        }
        if ids.len() as i64 > MAX_RANGE {
            return Err(format!(
                "class list holds more than {MAX_RANGE} ids (at item '{item}')"
            ));
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::parse_classes;

    #[test]
    fn lists_ranges_and_negative_ids() {
        assert_eq!(parse_classes("3,5,10-12").unwrap(), vec![3, 5, 10, 11, 12]);
        assert_eq!(parse_classes("-2,-4--3").unwrap(), vec![-2, -4, -3]);
        assert_eq!(parse_classes(" 7 ").unwrap(), vec![7]);
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(parse_classes("").unwrap_err().contains("empty item"));
        assert!(parse_classes("3,,4").unwrap_err().contains("empty item"));
        assert!(parse_classes("a").unwrap_err().contains("not an integer"));
        assert!(parse_classes("9-3").unwrap_err().contains("start > end"));
        assert!(parse_classes("0-99999999").unwrap_err().contains("more than"));
    }

    #[test]
    fn multibyte_first_characters_are_refused_not_split() {
        // U+2212 MINUS SIGN is three bytes: `item[1..]` would cut it.
        let e = parse_classes("\u{2212}1").unwrap_err();
        assert!(e.contains("'\u{2212}1'") && e.contains("not an integer"), "{e}");
        assert!(e.contains("ASCII '-'"), "{e}");
        let e = parse_classes("3,\u{2212}1-4").unwrap_err();
        assert!(e.contains("'\u{2212}1-4'"), "{e}");
        let e = parse_classes("1\u{2013}4").unwrap_err();
        assert!(e.contains("'1\u{2013}4'"), "{e}");
        let e = parse_classes("é").unwrap_err();
        assert!(e.contains("'é'"), "{e}");
        let e = parse_classes("5-").unwrap_err();
        assert!(e.contains("'5-'") && e.contains("empty"), "{e}");
    }

    #[test]
    fn ranges_wider_than_i64_are_refused_without_overflow() {
        let item = "-9223372036854775808-9223372036854775807";
        let e = parse_classes(item).unwrap_err();
        assert!(e.contains(item) && e.contains("more than"), "{e}");
        let e = parse_classes("-9223372036854775808--1").unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let e = parse_classes("0-9223372036854775808").unwrap_err();
        assert!(e.contains("64-bit"), "{e}");
        // The extremes themselves are fine in short ranges.
        assert_eq!(
            parse_classes("9223372036854775806-9223372036854775807").unwrap(),
            vec![i64::MAX - 1, i64::MAX]
        );
        assert_eq!(parse_classes("-9223372036854775808").unwrap(), vec![i64::MIN]);
    }

    #[test]
    fn the_whole_list_is_capped_too() {
        let spec = ["0-999999"; 3].join(",");
        let e = parse_classes(&spec).unwrap_err();
        assert!(e.contains("class list holds more than"), "{e}");
    }
}
