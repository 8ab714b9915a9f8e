//! Parsing class lists such as `3,5,10-19`.

/// Largest number of ids one range may expand to.
const MAX_RANGE: i64 = 1_000_000;

/// Parses a comma-separated list of class ids and inclusive ranges (`3,5,10-19`, `-2,-1`).
pub fn parse_classes(spec: &str) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for item in spec.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty item in class list '{spec}'"));
        }
        // A range's '-' is any '-' after the first character.
        let split = item[1..].find('-').map(|p| p + 1);
        let parse = |s: &str| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{s}' in class list is not an integer"))
        };
        match split {
            None => ids.push(parse(item)?),
            Some(p) => {
                let (lo, hi) = (parse(&item[..p])?, parse(&item[p + 1..])?);
                if lo > hi {
                    return Err(format!("class range '{item}' is empty (start > end)"));
                }
                if hi - lo >= MAX_RANGE {
                    return Err(format!("class range '{item}' holds more than {MAX_RANGE} ids"));
                }
                ids.extend(lo..=hi);
            }
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
}
