//! The DNS message format (RFC 1035), as much as a cluster DNS server
//! needs: parse a query's header and question, write a response with A,
//! CNAME and SRV records. Bad input is an error, never a panic.

use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_OK: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// The largest UDP response to a client that did not say it takes more.
pub const UDP_LIMIT: usize = 512;

/// Why a message could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Short,
    #[error("bad name")]
    BadName,
    #[error("not a query")]
    NotQuery,
}

/// A parsed query: its id, flags, and first question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired: echoed in the response.
    pub rd: bool,
    /// Opcode 0 (a standard query).
    pub standard: bool,
    pub question: Question,
}

/// One question: a lowercase name without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// A resource record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// A resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

impl Record {
    fn rtype(&self) -> u16 {
        match self.data {
            Data::A(_) => TYPE_A,
            Data::Cname(_) => TYPE_CNAME,
            Data::Srv { .. } => TYPE_SRV,
        }
    }
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, WireError> {
    let b = msg.get(at..at + 2).ok_or(WireError::Short)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads the name at `at`; returns it and the offset just past it where
/// it sits (compression pointers are followed, a bounded number of times).
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), WireError> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(WireError::Short)? as usize;
        match len {
            0 => {
                let name = labels.join(".");
                if name.len() > 253 {
                    return Err(WireError::BadName);
                }
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = (u16_at(msg, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                at = target;
            }
            l if l <= 63 => {
                let label = msg.get(at + 1..at + 1 + l).ok_or(WireError::Short)?;
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                at += 1 + l;
            }
            _ => return Err(WireError::BadName),
        }
    }
    Err(WireError::BadName)
}

/// Parses a query message.
pub fn parse_query(msg: &[u8]) -> Result<Query, WireError> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 != 0 {
        return Err(WireError::NotQuery);
    }
    if u16_at(msg, 4)? == 0 {
        return Err(WireError::Short);
    }
    let (name, at) = read_name(msg, 12)?;
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        standard: (flags >> 11) & 0xf == 0,
        question: Question {
            name,
            qtype: u16_at(msg, at)?,
            qclass: u16_at(msg, at + 2)?,
        },
    })
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

fn write_record(out: &mut Vec<u8>, r: &Record, question: &str) {
    // The question's name sits at offset 12: point there when it repeats.
    if r.name == question {
        out.extend_from_slice(&[0xc0, 12]);
    } else {
        write_name(out, &r.name);
    }
    out.extend_from_slice(&r.rtype().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&r.ttl.to_be_bytes());
    let mut rdata = Vec::new();
    match &r.data {
        Data::A(ip) => rdata.extend_from_slice(&ip.octets()),
        Data::Cname(target) => write_name(&mut rdata, target),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            rdata.extend_from_slice(&priority.to_be_bytes());
            rdata.extend_from_slice(&weight.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            write_name(&mut rdata, target);
        }
    }
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
}

/// Writes the response to `q`. Records that would take it past `limit`
/// bytes are left out and the message is marked truncated (TC), so the
/// client retries over TCP. `authoritative` sets AA (names of the cluster
/// domain).
pub fn response(
    q: &Query,
    rcode: u8,
    authoritative: bool,
    answers: &[Record],
    additional: &[Record],
    limit: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(UDP_LIMIT);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, TC (set below), RD echoed, RA: we recurse for names
    // outside the cluster domain.
    let mut flags: u16 = 0x8000 | 0x0080 | u16::from(rcode & 0xf);
    if authoritative {
        flags |= 0x0400;
    }
    if q.rd {
        flags |= 0x0100;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    write_name(&mut out, &q.question.name);
    out.extend_from_slice(&q.question.qtype.to_be_bytes());
    out.extend_from_slice(&q.question.qclass.to_be_bytes());
    let mut counts = [0u16; 2];
    let mut truncated = false;
    for (i, section) in [answers, additional].iter().enumerate() {
        if truncated {
            break;
        }
        for r in section.iter() {
            let mark = out.len();
            write_record(&mut out, r, &q.question.name);
            if out.len() > limit {
                out.truncate(mark);
                // Only missing answers make the response incomplete.
                truncated |= i == 0;
                break;
            }
            counts[i] += 1;
        }
    }
    if truncated {
        flags |= 0x0200;
        out[2..4].copy_from_slice(&flags.to_be_bytes());
    }
    out[6..8].copy_from_slice(&counts[0].to_be_bytes());
    out[10..12].copy_from_slice(&counts[1].to_be_bytes());
    out
}

/// A bare error response for a message whose question could not be read:
/// the id and the error code.
pub fn error_for(msg: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let id = msg.get(0..2)?;
    let mut out = Vec::from(id);
    out.extend_from_slice(&(0x8000u16 | u16::from(rcode)).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

#[cfg(test)]
pub(crate) fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    write_name(&mut out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// Reads the answer section of a response (for tests and diagnostics):
/// (rcode, truncated, records).
pub fn parse_response(msg: &[u8]) -> Result<(u8, bool, Vec<Record>), WireError> {
    let flags = u16_at(msg, 2)?;
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = read_name(msg, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (name, next) = read_name(msg, at)?;
        let rtype = u16_at(msg, next)?;
        let ttl = u32::from(u16_at(msg, next + 4)?) << 16 | u32::from(u16_at(msg, next + 6)?);
        let len = u16_at(msg, next + 8)? as usize;
        let rdata = next + 10;
        msg.get(rdata..rdata + len).ok_or(WireError::Short)?;
        let data = match rtype {
            // The rdata length is the sender's word; an A record shorter
            // than 4 bytes at the end of the message must not index past it.
            TYPE_A => {
                let b = msg.get(rdata..rdata + 4).filter(|_| len == 4);
                let b = b.ok_or(WireError::Short)?;
                Data::A(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            TYPE_CNAME => Data::Cname(read_name(msg, rdata)?.0),
            TYPE_SRV => Data::Srv {
                priority: u16_at(msg, rdata)?,
                weight: u16_at(msg, rdata + 2)?,
                port: u16_at(msg, rdata + 4)?,
                target: read_name(msg, rdata + 6)?.0,
            },
            _ => {
                at = rdata + len;
                continue;
            }
        };
        out.push(Record { name, ttl, data });
        at = rdata + len;
    }
    Ok(((flags & 0xf) as u8, flags & 0x0200 != 0, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_round_trips_through_a_response() {
        let q = parse_query(&query_bytes(7, "Web.Default.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(q.question.name, "web.default.svc.cluster.local");
        assert_eq!(q.question.qtype, TYPE_A);
        assert!(q.rd && q.standard);
        let answers = [Record {
            name: q.question.name.clone(),
            ttl: 5,
            data: Data::A(Ipv4Addr::new(10, 96, 0, 7)),
        }];
        let srv = [Record {
            name: "_http._tcp.web.default.svc.cluster.local".into(),
            ttl: 5,
            data: Data::Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.default.svc.cluster.local".into(),
            },
        }];
        let msg = response(&q, RCODE_OK, true, &answers, &srv, UDP_LIMIT);
        assert_eq!(&msg[0..2], &7u16.to_be_bytes());
        let (rcode, tc, records) = parse_response(&msg).unwrap();
        assert_eq!((rcode, tc), (RCODE_OK, false));
        assert_eq!(records, answers);
    }

    #[test]
    fn too_many_answers_for_udp_set_the_truncated_bit() {
        let q = parse_query(&query_bytes(1, "many.default.svc.cluster.local", TYPE_A)).unwrap();
        let answers: Vec<Record> = (0..100)
            .map(|i| Record {
                name: q.question.name.clone(),
                ttl: 5,
                data: Data::A(Ipv4Addr::new(10, 244, 0, i)),
            })
            .collect();
        let msg = response(&q, RCODE_OK, true, &answers, &[], UDP_LIMIT);
        assert!(msg.len() <= UDP_LIMIT);
        let (_, tc, records) = parse_response(&msg).unwrap();
        assert!(tc);
        assert!(!records.is_empty() && records.len() < 100);
        let msg = response(&q, RCODE_OK, true, &answers, &[], 65535);
        assert_eq!(parse_response(&msg).unwrap().2.len(), 100);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse_query(&[]), Err(WireError::Short));
        assert_eq!(parse_query(&[0; 11]), Err(WireError::Short));
        // A compression pointer loop.
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 12]);
        assert_eq!(parse_query(&m), Err(WireError::BadName));
        // A response is not a query.
        let mut r = query_bytes(1, "x", TYPE_A);
        r[2] |= 0x80;
        assert_eq!(parse_query(&r), Err(WireError::NotQuery));
        assert_eq!(error_for(&[0, 9], RCODE_FORMERR).unwrap()[..2], [0, 9]);
        // An A record whose rdata is empty and ends the message.
        let mut a = query_bytes(2, "x", TYPE_A);
        a[2] |= 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 0]);
        assert_eq!(parse_response(&a), Err(WireError::Short));
    }
}
