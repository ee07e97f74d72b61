//! The protobuf wire format: splits a message's bytes into numbered fields. It knows nothing
//! of any schema; [`super::json`] gives the fields their meaning.
//!
//! Every read is bounds-checked and no length is trusted before it is checked against the
//! bytes that are actually there, so a hostile body costs at most one pass over itself.

/// One field's raw value, by wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Why bytes are not protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the bytes end inside a field")]
    Truncated,
    #[error("a varint is longer than 10 bytes")]
    VarintTooLong,
    #[error("wire type {0} is not one Kubernetes uses")]
    WireType(u64),
    #[error("field number {0} is out of range")]
    FieldNumber(u64),
}

pub type Result<T, E = Malformed> = std::result::Result<T, E>;

/// Reads values off the front of a byte slice.
pub struct Reader<'a>(&'a [u8]);

/// The fields of one message, in wire order.
pub struct Fields<'a>(Reader<'a>);

// === impl Reader ===

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut out = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(Malformed::Truncated)?;
            self.0 = rest;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(Malformed::VarintTooLong)
    }

    pub fn fixed32(&mut self) -> Result<u32> {
        let word = self.take(4)?.try_into().map_err(|_| Malformed::Truncated)?;
        Ok(u32::from_le_bytes(word))
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        let word = self.take(8)?.try_into().map_err(|_| Malformed::Truncated)?;
        Ok(u64::from_le_bytes(word))
    }

    /// The next `n` bytes; shorter input is `Truncated`, never a short slice.
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Malformed::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

// === impl Fields ===

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Fields(Reader::new(bytes))
    }

    fn field(&mut self) -> Result<(u32, Wire<'a>)> {
        let key = self.0.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n != 0)
            .ok_or(Malformed::FieldNumber(key >> 3))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.0.varint()?),
            1 => Wire::Fixed64(self.0.fixed64()?),
            2 => {
                let len = usize::try_from(self.0.varint()?).map_err(|_| Malformed::Truncated)?;
                Wire::Bytes(self.0.take(len)?)
            }
            5 => Wire::Fixed32(self.0.fixed32()?),
            // 3 and 4 are proto2 groups, which no Kubernetes type uses; 6 and 7 do not exist.
            w => return Err(Malformed::WireType(w)),
        };
        Ok((number, wire))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // One error ends the message: what follows cannot be framed.
            self.0 = Reader::new(&[]);
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fields_of_every_wire_type() {
        let bytes = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 2, b'h', b'i', // 3: bytes "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        let fields: Vec<_> = Fields::new(&bytes).collect::<Result<_>>().unwrap();
        assert_eq!(
            fields,
            [
                (1, Wire::Varint(150)),
                (2, Wire::Fixed64(1)),
                (3, Wire::Bytes(b"hi")),
                (4, Wire::Fixed32(2)),
            ]
        );
    }

    #[test]
    fn broken_bytes_are_errors_not_panics() {
        let first = |b: &[u8]| Fields::new(b).next().unwrap().unwrap_err();
        assert_eq!(first(&[0x0a, 5, 1]), Malformed::Truncated);
        assert_eq!(first(&[0x08]), Malformed::Truncated);
        assert_eq!(
            first(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            Malformed::VarintTooLong
        );
        assert_eq!(first(&[0x0b]), Malformed::WireType(3));
        assert_eq!(first(&[0x00]), Malformed::FieldNumber(0));
        assert_eq!(
            first(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Malformed::Truncated
        );
        // After an error the iterator ends.
        let mut f = Fields::new(&[0x0b, 0x08, 1]);
        assert!(f.next().unwrap().is_err());
        assert!(f.next().is_none());
    }
}
