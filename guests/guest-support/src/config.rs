//! Config strings: JSON objects, with an empty string meaning "all
//! defaults".

use serde::de::DeserializeOwned;

/// Parses a guest's config string into `T`.
///
/// An empty (or all-whitespace) string is `{}`. Anything else must be a
/// JSON object: serde would otherwise also accept a struct written as an
/// array (`["MostFree"]`), which nobody means. `T` should use
/// `#[serde(deny_unknown_fields)]` so that a misspelt option is refused
/// rather than ignored. The error is serde's, prefixed with `guest`, e.g.
/// `vxnet-select config: unknown variant `Fastest`, expected one of ...`.
pub fn parse_config<T: DeserializeOwned>(guest: &str, config: &str) -> Result<T, String> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{guest} config is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "{guest} config must be a JSON object (or empty), not {}",
            kind(&value)
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("{guest} config: {e}"))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(parse_config::<Opts>("g", "").unwrap(), Opts { n: 0 });
        assert_eq!(parse_config::<Opts>("g", " \n").unwrap(), Opts { n: 0 });
        assert_eq!(parse_config::<Opts>("g", "{}").unwrap(), Opts { n: 0 });
        assert_eq!(
            parse_config::<Opts>("g", r#"{"n": 3}"#).unwrap(),
            Opts { n: 3 }
        );
    }

    #[test]
    fn refusals_name_the_guest_and_the_problem() {
        let e = parse_config::<Opts>("g", "{").unwrap_err();
        assert!(e.starts_with("g config is not valid JSON: "), "{e}");
        let e = parse_config::<Opts>("g", "[3]").unwrap_err();
        assert_eq!(e, "g config must be a JSON object (or empty), not an array");
        let e = parse_config::<Opts>("g", "null").unwrap_err();
        assert!(e.ends_with("not null"), "{e}");
        let e = parse_config::<Opts>("g", r#"{"m": 3}"#).unwrap_err();
        assert!(e.contains("unknown field `m`"), "{e}");
    }
}
