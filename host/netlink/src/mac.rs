use std::fmt;
use std::str::FromStr;

/// An Ethernet address. On QingCloud a NIC's id *is* its MAC, so this is
/// also how a cloud NIC is named.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable interface name for this NIC while it waits in the node
    /// namespace: `hn` + 12 hex digits = 14 bytes, within IFNAMSIZ.
    pub fn parked_name(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("hn{hex}")
    }

    /// The name of the node's gateway NIC in a vxnet (see the agent's
    /// cloud pool): `gw` + 12 hex digits.
    pub fn gateway_name(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("gw{hex}")
    }

    pub fn from_bytes(b: &[u8]) -> Option<Mac> {
        Some(Mac(b.try_into().ok()?))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("{s:?} is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for slot in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *slot = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

// MACs travel as strings in configs and records.
impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_parks() {
        let m: Mac = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(m.parked_name(), "hn525400abcd0f");
        assert!(m.parked_name().len() <= 15);
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "zz:54:00:ab:cd:0f",
            "525:4:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
