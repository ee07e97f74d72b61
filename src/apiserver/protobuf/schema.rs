//! The schema of every protobuf message the served kinds reach, as static tables
//! (`tables.rs`) that `.ci/openapi-gen` generates from the `k8s-pb` crate (prost's code for
//! Kubernetes' `.proto` files: messages, field numbers, types) and the `k8s-openapi` crate
//! (JSON names): what [`super::json`] reads a body with.
//!
//! Invariant (from the generator, checked by the tests): `MESSAGES` is sorted by full name,
//! each message's fields by number, and every `Type::Message` index points into `MESSAGES`.

/// One protobuf message type.
#[derive(Debug)]
pub struct Message {
    /// The full protobuf name, `k8s.io.api.apps.v1.Deployment`.
    name: Name,
    /// apimachinery's types whose JSON form is not their fields.
    pub special: Special,
    /// Its fields are `FIELDS[first_field..][..field_count]`.
    first_field: u16,
    field_count: u16,
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub number: u32,
    /// The JSON name (for an `Inline` field, the proto name, which JSON never shows).
    name: Name,
    pub ty: Type,
    pub label: Label,
}

/// A range of `NAMES`: the tables hold offsets, not pointers, so they need no relocation.
#[derive(Debug, Clone, Copy)]
struct Name {
    start: u32,
    len: u8,
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
    /// A Go embedded struct (`Volume.volumeSource`): a message field in protobuf whose fields
    /// JSON writes into the parent object. Such a message has no `Inline` fields itself.
    Inline,
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
    // No served kind reaches a Duration today; the reader handles it for the next one that does.
    #[allow(dead_code)]
    Duration,
    /// `runtime.RawExtension`, `meta.v1.FieldsV1`: the JSON their bytes hold.
    Embedded,
}

include!("tables.rs");

/// The message of a full protobuf name.
pub fn message(name: &str) -> Option<&'static Message> {
    let messages: &'static [Message] = MESSAGES;
    messages
        .binary_search_by(|m| m.name().cmp(name))
        .ok()
        .and_then(|i| messages.get(i))
}

// === impl Message ===

impl Message {
    pub fn name(&self) -> &'static str {
        self.name.text()
    }

    pub fn fields(&self) -> &'static [Field] {
        let start = usize::from(self.first_field);
        FIELDS
            .get(start..start + usize::from(self.field_count))
            .unwrap_or_default()
    }

    pub fn field(&self, number: u32) -> Option<&'static Field> {
        let fields = self.fields();
        fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .and_then(|i| fields.get(i))
    }

    pub fn field_named(&self, name: &str) -> Option<&'static Field> {
        self.fields().iter().find(|f| f.name() == name)
    }
}

// === impl Field ===

impl Field {
    pub fn name(&self) -> &'static str {
        self.name.text()
    }
}

// === impl Name ===

impl Name {
    fn text(self) -> &'static str {
        let start = self.start as usize;
        NAMES
            .get(start..start + usize::from(self.len))
            .unwrap_or("")
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
