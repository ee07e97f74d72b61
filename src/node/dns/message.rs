//! Turning request bytes into a question and answers into reply bytes, without IO: parsing
//! (malformed input becomes FORMERR or is dropped), composing the reply for a [`Lookup`], and
//! fitting a reply into what the client can receive (TC for UDP, EDNS0 sizes).
//!
//! Invariants: a reply always carries the request's id, opcode, RD bit and question; nothing
//! that looks like a response is ever answered (no reflection loops between servers).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};

use super::zone::{Lookup, Zone};

/// UDP payload without EDNS0 (RFC 1035).
pub const PLAIN_UDP: usize = 512;
/// The largest UDP payload this server sends or advertises (the DNS flag day 2020 value:
/// no IP fragmentation on ordinary paths).
pub const MAX_UDP: u16 = 1232;

/// What a datagram or TCP frame turned out to be.
#[derive(Debug)]
pub enum Incoming {
    /// One standard question to answer.
    Question(Request),
    /// Not answerable: reply with this (FORMERR, NOTIMP).
    Refuse(Message),
    /// Too broken to answer (no header) or a response: ignore it.
    Drop,
}

/// A parsed standard query with exactly one question.
#[derive(Debug, Clone)]
pub struct Request {
    pub message: Message,
}

// === impl Request ===

impl Request {
    pub fn query(&self) -> &Query {
        // Invariant: `parse` only makes requests with exactly one question.
        &self.message.queries[0]
    }

    /// The biggest UDP reply the client accepts: its EDNS0 size (at least 512), capped at ours.
    pub fn udp_limit(&self) -> usize {
        match &self.message.edns {
            Some(e) => usize::from(e.max_payload().clamp(PLAIN_UDP as u16, MAX_UDP)),
            None => PLAIN_UDP,
        }
    }

    /// A reply skeleton: same id, opcode, RD, question; EDNS0 if the client used it.
    pub fn reply(&self, code: ResponseCode) -> Message {
        let m = &self.message;
        let mut reply = Message::response(m.metadata.id, m.metadata.op_code);
        reply.metadata.recursion_desired = m.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.response_code = code;
        reply.queries = m.queries.clone();
        if m.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP);
            reply.edns = Some(edns);
        }
        reply
    }

    /// The reply for what the zone found (not for [`Lookup::Outside`], which is forwarded,
    /// nor for [`Lookup::Alias`] without its target's answers: see [`Request::alias_reply`]).
    pub fn answer(&self, lookup: Lookup, zone: &Zone) -> Message {
        match lookup {
            Lookup::Found {
                answers,
                additionals,
            } => {
                let mut r = self.reply(ResponseCode::NoError);
                r.metadata.authoritative = true;
                r.answers = answers;
                r.additionals = additionals;
                r
            }
            Lookup::NoData => {
                let mut r = self.reply(ResponseCode::NoError);
                r.metadata.authoritative = true;
                r.authorities.push(zone.soa());
                r
            }
            Lookup::NxDomain => {
                let mut r = self.reply(ResponseCode::NXDomain);
                r.metadata.authoritative = true;
                r.authorities.push(zone.soa());
                r
            }
            Lookup::Alias { cname, .. } => self.alias_reply(cname, None),
            Lookup::Outside => self.reply(ResponseCode::ServFail),
        }
    }

    /// An ExternalName's CNAME followed by what its target resolved to (if it did).
    pub fn alias_reply(&self, cname: Box<Record>, target: Option<Message>) -> Message {
        let mut r = self.reply(ResponseCode::NoError);
        r.metadata.authoritative = true;
        r.answers.push(*cname);
        if let Some(t) = target {
            r.metadata.response_code = t.metadata.response_code;
            r.answers.extend(t.answers);
            r.authorities.extend(t.authorities);
        }
        r
    }
}

/// Parses one request. Garbage with a readable id gets FORMERR; anything shorter than a
/// header, or a response, is dropped.
pub fn parse(bytes: &[u8]) -> Incoming {
    let message = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            // QR is the top bit of byte 2; never answer something that claims to be a reply.
            return match bytes {
                [a, b, flags, ..] if bytes.len() >= 12 && flags & 0x80 == 0 => {
                    let id = u16::from_be_bytes([*a, *b]);
                    Incoming::Refuse(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr))
                }
                _ => Incoming::Drop,
            };
        }
    };
    if message.metadata.message_type != MessageType::Query {
        return Incoming::Drop;
    }
    let request = Request { message };
    let m = &request.message;
    if m.metadata.op_code != OpCode::Query {
        let mut r = Message::error_msg(m.metadata.id, m.metadata.op_code, ResponseCode::NotImp);
        r.queries = m.queries.clone();
        return Incoming::Refuse(r);
    }
    if m.queries.len() != 1 {
        return Incoming::Refuse(request.reply(ResponseCode::FormErr));
    }
    Incoming::Question(request)
}

/// Whether the zone may answer this question at all (class IN or ANY).
pub fn is_internet(query: &Query) -> bool {
    matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
}

/// The reply's bytes within `limit`: a reply that does not fit keeps only its question, with
/// TC set, so the client asks again over TCP. `None` if it cannot be encoded at all.
pub fn encode(reply: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut cut = reply.truncate();
    cut.metadata.id = reply.metadata.id;
    cut.metadata.message_type = MessageType::Response;
    cut.to_vec().ok().filter(|b| b.len() <= limit)
}
