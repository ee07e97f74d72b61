//! The schema of every message in Kubernetes' `.proto` files for the served groups, as static
//! tables that `build.rs` generates from them: what [`super::json`] reads a body with.
//!
//! Invariant (from the generator, checked by the tests against the descriptors): `MESSAGES`
//! is sorted by full name, each message's fields by number, and every `Type::Message` index
//! points into `MESSAGES`.

/// One protobuf message type.
#[derive(Debug)]
pub struct Message {
    /// The full protobuf name, `k8s.io.api.apps.v1.Deployment`.
    pub name: &'static str,
    /// apimachinery's types whose JSON form is not their fields.
    pub special: Special,
    pub fields: &'static [Field],
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub number: u32,
    /// The proto name, which go-to-protobuf makes the JSON name.
    pub name: &'static str,
    pub ty: Type,
    pub label: Label,
}

/// A field's protobuf type; messages by index into [`MESSAGES`].
// Today's schemas use no floats, unsigned, zigzag or fixed-width numbers; the reader handles
// them anyway, so a new API group's schema needs no code change.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum,
    Message(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Singular,
    Repeated,
    /// A `map<K, V>`: repeated entries of the map-entry message `Type::Message` names (key is
    /// field 1, value field 2).
    Map,
}

/// How a message is written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// An object of its fields.
    None,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `meta.v1.Time`: RFC 3339 to the second, `null` when zero.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 to the microsecond, `null` when zero.
    MicroTime,
    /// `meta.v1.Duration`: Go's `1h2m3s`.
    Duration,
    /// `runtime.RawExtension`, `meta.v1.FieldsV1`: the JSON their bytes hold.
    Embedded,
}

include!(concat!(env!("OUT_DIR"), "/schema.rs"));

/// The message of a full protobuf name.
pub fn message(name: &str) -> Option<&'static Message> {
    MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .and_then(|i| MESSAGES.get(i))
}

// === impl Message ===

impl Message {
    pub fn field(&self, number: u32) -> Option<&'static Field> {
        let fields: &'static [Field] = self.fields;
        fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .and_then(|i| fields.get(i))
    }

    pub fn field_named(&self, name: &str) -> Option<&'static Field> {
        let fields: &'static [Field] = self.fields;
        fields.iter().find(|f| f.name == name)
    }
}

// === impl Type ===

impl Type {
    /// The message a `Message` type names.
    pub fn message(self) -> Option<&'static Message> {
        match self {
            Type::Message(i) => MESSAGES.get(usize::from(i)),
            _ => None,
        }
    }
}
