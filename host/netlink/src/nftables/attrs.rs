//! Netlink attributes: type-length-value, padded to 4 bytes, integers
//! big endian (nf_tables' own), nests flagged as such.

const NLA_F_NESTED: u16 = 0x8000;

/// Netlink attributes appended to a message.
pub(super) struct Attrs<'a>(pub(super) &'a mut Vec<u8>);

impl Attrs<'_> {
    pub(super) fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    pub(super) fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub(super) fn str(&mut self, kind: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.bytes(kind, &v);
    }

    pub(super) fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 2]);
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}
