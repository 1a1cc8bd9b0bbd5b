//! Config value types and validators, with the error messages Kafka's clients and tools
//! show for them (`Invalid value V for configuration K: reason`).

/// Kafka's config value types, numbered as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// true or false.
    Boolean = 1,
    /// Text.
    String = 2,
    /// 32-bit integer.
    Int = 3,
    /// 16-bit integer.
    Short = 4,
    /// 64-bit integer.
    Long = 5,
    /// Floating point.
    Double = 6,
    /// Comma-separated list.
    List = 7,
}

/// What values a key accepts beyond its type.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Any value of the type.
    Any,
    /// A number at least this large.
    AtLeast(i64),
    /// A number in this closed range.
    Between(i64, i64),
    /// A number in this closed range, or exactly the extra value.
    BetweenOr(i64, i64, i64),
    /// A floating-point number in this closed range.
    Ratio(f64, f64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A list whose items are all from this set.
    ListOf(&'static [&'static str]),
    /// `*`, or a list of `partition:brokerId` pairs.
    ThrottledReplicas,
}

fn invalid(name: &str, value: &str, reason: impl std::fmt::Display) -> String {
    format!("Invalid value {value} for configuration {name}: {reason}")
}

/// Splits a list value the way Kafka does: comma-separated, trimmed, empty items dropped.
pub fn list_items(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses an integer of the given kind (INT must fit 32 bits).
fn parse_int(name: &str, value: &str, kind: Kind) -> Result<i64, String> {
    let ty = match kind {
        Kind::Short => "SHORT",
        Kind::Int => "INT",
        _ => "LONG",
    };
    let not_a_number = || invalid(name, value, format!("Not a number of type {ty}"));
    let n: i64 = value.trim().parse().map_err(|_| not_a_number())?;
    let fits = match kind {
        Kind::Short => i16::try_from(n).is_ok(),
        Kind::Int => i32::try_from(n).is_ok(),
        _ => true,
    };
    if fits {
        Ok(n)
    } else {
        Err(not_a_number())
    }
}

/// Validates `value` for key `name`; the error is Kafka's message for the same value.
pub fn check_value(name: &str, kind: Kind, check: Check, value: &str) -> Result<(), String> {
    let trimmed = value.trim();
    match kind {
        Kind::Boolean => {
            if !trimmed.eq_ignore_ascii_case("true") && !trimmed.eq_ignore_ascii_case("false") {
                return Err(invalid(
                    name,
                    value,
                    "Expected value to be either true or false",
                ));
            }
        }
        Kind::Short | Kind::Int | Kind::Long => {
            let n = parse_int(name, value, kind)?;
            match check {
                Check::AtLeast(min) if n < min => {
                    return Err(invalid(
                        name,
                        value,
                        format!("Value must be at least {min}"),
                    ))
                }
                Check::BetweenOr(min, max, extra) if (n < min || n > max) && n != extra => {
                    return Err(invalid(
                        name,
                        value,
                        format!("Value must be between {min} and {max} or equal to {extra}"),
                    ));
                }
                Check::Between(min, max) if n < min || n > max => {
                    let reason = if n < min {
                        format!("Value must be at least {min}")
                    } else {
                        format!("Value must be no more than {max}")
                    };
                    return Err(invalid(name, value, reason));
                }
                _ => {}
            }
        }
        Kind::Double => {
            let n: f64 = trimmed
                .parse()
                .map_err(|_| invalid(name, value, "Not a number of type DOUBLE"))?;
            if let Check::Ratio(min, max) = check {
                if n < min {
                    return Err(invalid(
                        name,
                        value,
                        format!("Value must be at least {min}"),
                    ));
                }
                if n > max {
                    return Err(invalid(
                        name,
                        value,
                        format!("Value must be no more than {max}"),
                    ));
                }
            }
        }
        Kind::String => {
            if let Check::OneOf(allowed) = check {
                if !allowed.contains(&trimmed) {
                    return Err(invalid(
                        name,
                        value,
                        format!("String must be one of: {}", allowed.join(", ")),
                    ));
                }
            }
        }
        Kind::List => match check {
            Check::ListOf(allowed) => {
                let items = list_items(value);
                // Kafka names the offending element, not the whole list.
                if let Some(bad) = items.iter().find(|i| !allowed.contains(i)) {
                    return Err(invalid(
                        name,
                        bad,
                        format!("String must be one of: {}", allowed.join(", ")),
                    ));
                }
            }
            Check::ThrottledReplicas => {
                let items = list_items(value);
                let pair_ok = |i: &&str| {
                    i.split_once(':').is_some_and(|(p, b)| {
                        p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
                    })
                };
                if !(items == ["*"] || items.iter().all(pair_ok)) {
                    // Kafka prints the value as a Java list and repeats the key in the reason.
                    return Err(invalid(
                        name,
                        &format!("[{}]", items.join(", ")),
                        format!(
                            "{name} must be the literal '*' or a list of replicas in the following \
                             format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
                        ),
                    ));
                }
            }
            _ => {}
        },
    }
    Ok(())
}

/// Normalises a valid value the way Kafka describes it (booleans lower-case, lists
/// trimmed and without repeats).
pub fn normalise(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Boolean => value.trim().to_ascii_lowercase(),
        Kind::List => {
            let mut items: Vec<&str> = Vec::new();
            for i in list_items(value) {
                if !items.contains(&i) {
                    items.push(i);
                }
            }
            items.join(",")
        }
        _ => value.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_kafkas() {
        assert_eq!(
            check_value("retention.ms", Kind::Long, Check::AtLeast(-1), "-2").unwrap_err(),
            "Invalid value -2 for configuration retention.ms: Value must be at least -1"
        );
        assert_eq!(
            check_value("segment.bytes", Kind::Int, Check::AtLeast(14), "9999999999").unwrap_err(),
            "Invalid value 9999999999 for configuration segment.bytes: Not a number of type INT"
        );
        assert!(check_value("preallocate", Kind::Boolean, Check::Any, "TRUE").is_ok());
        assert!(check_value("preallocate", Kind::Boolean, Check::Any, "yes")
            .unwrap_err()
            .ends_with("Expected value to be either true or false"));
        let gz = Check::BetweenOr(1, 9, -1);
        assert!(check_value("compression.gzip.level", Kind::Int, gz, "-1").is_ok());
        assert!(check_value("compression.gzip.level", Kind::Int, gz, "10")
            .unwrap_err()
            .ends_with("Value must be between 1 and 9 or equal to -1"));
        let r = Check::Ratio(0.0, 1.0);
        assert!(check_value("min.cleanable.dirty.ratio", Kind::Double, r, "0.5").is_ok());
        assert!(check_value("min.cleanable.dirty.ratio", Kind::Double, r, "1.5").is_err());
        let policy = Check::ListOf(&["compact", "delete"]);
        assert!(check_value("cleanup.policy", Kind::List, policy, "compact, delete").is_ok());
        assert!(check_value("cleanup.policy", Kind::List, policy, "").is_ok());
        assert_eq!(
            check_value("cleanup.policy", Kind::List, policy, "delete,shred").unwrap_err(),
            "Invalid value shred for configuration cleanup.policy: String must be one of: compact, delete"
        );
        let t = Check::ThrottledReplicas;
        let key = "leader.replication.throttled.replicas";
        assert!(check_value(key, Kind::List, t, "*").is_ok());
        assert!(check_value(key, Kind::List, t, "0:1, 1:2").is_ok());
        assert!(check_value(key, Kind::List, t, "").is_ok());
        assert_eq!(
            check_value(key, Kind::List, t, "0:1, 0-1").unwrap_err(),
            "Invalid value [0:1, 0-1] for configuration leader.replication.throttled.replicas: \
             leader.replication.throttled.replicas must be the literal '*' or a list of replicas \
             in the following format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
        );
    }

    #[test]
    fn normalised_values() {
        assert_eq!(normalise(Kind::Boolean, " True"), "true");
        assert_eq!(
            normalise(Kind::List, "compact , delete,compact"),
            "compact,delete"
        );
    }
}
