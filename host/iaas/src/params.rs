//! Request parameters and the cloud's list encoding, both ways.
//!
//! Lists are 1-based and dotted (`nics.1=…&nics.2=…`); lists of records add
//! the field name (`resource_tag_pairs.1.tag_id=…`). The client encodes with
//! [`Params`]; the simulator decodes with [`list`] and [`records`], so the
//! two can never disagree on the shape.

use std::collections::BTreeMap;
use std::fmt::Display;

/// The parameters of one request, in insertion order (signing sorts them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    pub fn set(&mut self, name: &str, value: impl Display) -> &mut Params {
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    /// `name.1=a&name.2=b…`; nothing at all for an empty list (the cloud
    /// reads a missing filter as "no filter").
    pub fn list<I>(&mut self, name: &str, items: I) -> &mut Params
    where
        I: IntoIterator,
        I::Item: Display,
    {
        for (i, item) in items.into_iter().enumerate() {
            self.set(&format!("{name}.{}", i + 1), item);
        }
        self
    }

    /// `name.1.field=…` for each record's fields.
    pub fn records<R, F, V>(&mut self, name: &str, records: R) -> &mut Params
    where
        R: IntoIterator<Item = F>,
        F: IntoIterator<Item = (&'static str, V)>,
        V: Display,
    {
        for (i, fields) in records.into_iter().enumerate() {
            for (field, value) in fields {
                self.set(&format!("{name}.{}.{field}", i + 1), value);
            }
        }
        self
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        get(&self.0, name)
    }
}

/// The value of a plain parameter in decoded pairs.
pub fn get<'a, K: AsRef<str>, V: AsRef<str>>(pairs: &'a [(K, V)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

/// The items of list `name`, in index order (`name.1`, `name.2`, …).
pub fn list<'a, K: AsRef<str>, V: AsRef<str>>(pairs: &'a [(K, V)], name: &str) -> Vec<&'a str> {
    let mut items: BTreeMap<usize, &str> = BTreeMap::new();
    for (k, v) in pairs {
        let index = k
            .as_ref()
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(i) = index {
            items.insert(i, v.as_ref());
        }
    }
    items.into_values().collect()
}

/// The records of list `name`, in index order, each as field → value.
pub fn records<'a, K: AsRef<str>, V: AsRef<str>>(
    pairs: &'a [(K, V)],
    name: &str,
) -> Vec<BTreeMap<&'a str, &'a str>> {
    let mut items: BTreeMap<usize, BTreeMap<&str, &str>> = BTreeMap::new();
    for (k, v) in pairs {
        let Some(rest) = k
            .as_ref()
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        if let Ok(i) = index.parse::<usize>() {
            items.entry(i).or_default().insert(field, v.as_ref());
        }
    }
    items.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_one_based_and_dotted() {
        let mut p = Params::new();
        p.set("vxnet", "vxnet-a")
            .list("nics", ["52:54:00:00:00:01", "52:54:00:00:00:02"])
            .list("instances", Vec::<String>::new());
        let pairs: Vec<(&str, &str)> = p
            .pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("vxnet", "vxnet-a"),
                ("nics.1", "52:54:00:00:00:01"),
                ("nics.2", "52:54:00:00:00:02"),
            ]
        );
        assert_eq!(p.get("vxnet"), Some("vxnet-a"));
    }

    #[test]
    fn records_carry_the_field_name() {
        let mut p = Params::new();
        p.records(
            "resource_tag_pairs",
            [
                [
                    ("tag_id", "tag-1"),
                    ("resource_type", "nic"),
                    ("resource_id", "m1"),
                ],
                [
                    ("tag_id", "tag-2"),
                    ("resource_type", "nic"),
                    ("resource_id", "m2"),
                ],
            ],
        );
        assert_eq!(
            p.pairs()[0],
            ("resource_tag_pairs.1.tag_id".into(), "tag-1".into())
        );
        assert_eq!(
            p.pairs()[5],
            ("resource_tag_pairs.2.resource_id".into(), "m2".into())
        );
        let back = records(p.pairs(), "resource_tag_pairs");
        assert_eq!(back.len(), 2);
        assert_eq!(back[1]["tag_id"], "tag-2");
        assert_eq!(back[1]["resource_id"], "m2");
    }

    #[test]
    fn decoding_orders_by_index_not_by_text() {
        let mut p = Params::new();
        p.list("nics", (1..=11).map(|i| format!("n{i}")));
        let mut shuffled = p.pairs().to_vec();
        shuffled.sort(); // nics.1, nics.10, nics.11, nics.2, …
        let back = list(&shuffled, "nics");
        assert_eq!(back.first(), Some(&"n1"));
        assert_eq!(back.get(1), Some(&"n2"));
        assert_eq!(back.last(), Some(&"n11"));
        // A parameter whose name merely starts with the list's is not in it.
        assert!(list(&[("nics_count", "3")], "nics").is_empty());
    }
}
