//! `ResponseHandler`s: encode hickory's `MessageResponse` to wire bytes and
//! hand them to a socket, or record them (tests).

use std::sync::{Arc, Mutex};

use hickory_proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::server::{ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

/// Encodes a response within `max_size` bytes (hickory truncates and sets
/// TC if it does not fit); an encoding failure becomes a bare SERVFAIL.
pub fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    max_size: u16,
) -> (ResponseInfo, Vec<u8>) {
    let id = response.metadata().id;
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    if let Ok(info) = response.destructive_emit(&mut encoder) {
        return (info, bytes);
    }
    bytes.clear();
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut encoder = BinEncoder::new(&mut bytes);
    let _ = header.emit(&mut encoder);
    (ResponseInfo::from(header), bytes)
}

/// Keeps every response it is given, decoded (unit tests).
#[derive(Clone, Default)]
pub struct RecordingReply {
    pub sent: Arc<Mutex<Vec<Message>>>,
    /// UDP-style size limit; `u16::MAX` for TCP.
    pub max_size: u16,
}

impl RecordingReply {
    pub fn udp(max_size: u16) -> Self {
        Self {
            sent: Arc::default(),
            max_size,
        }
    }

    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl ResponseHandler for RecordingReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, self.max_size);
        let message = Message::from_vec(&bytes).expect("our own encoding decodes");
        self.sent.lock().unwrap().push(message);
        Ok(info)
    }
}
