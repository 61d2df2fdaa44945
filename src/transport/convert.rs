//! Wire <-> core conversions, and the one place where library errors become
//! gRPC statuses and back.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::proto;
use crate::raft::{
    AppendEntries, AppendEntriesResponse, Entry, LogIndex, NodeId, RequestVote,
    RequestVoteResponse, Term, TimeoutNow,
};
use crate::Error;

/// Metadata naming our error class, so clients never guess from the code alone.
const ERROR_KEY: &str = "lattice-error";
/// Metadata carrying the leader's KV address with a `not-leader` error.
const LEADER_KEY: &str = "lattice-leader";

/// The class a client sorts an error by, and the gRPC code it travels with.
fn class_of(error: &Error) -> (Code, &'static str) {
    match error {
        Error::NotLeader { .. } => (Code::FailedPrecondition, "not-leader"),
        Error::InvalidArgument(_) => (Code::InvalidArgument, "invalid-argument"),
        Error::Unavailable(_) => (Code::Unavailable, "unavailable"),
        Error::Indeterminate(_) => (Code::Unknown, "indeterminate"),
        Error::Storage { .. } | Error::Io { .. } | Error::Config(_) | Error::Transport(_) => {
            (Code::Internal, "internal")
        }
    }
}

/// The error a Lattice node said, from its class, message and leader hint.
/// `None` for a class no Lattice node sends.
fn error_of_class(class: &str, message: String, leader: Option<String>) -> Option<Error> {
    Some(match class {
        "not-leader" => Error::NotLeader { leader },
        "invalid-argument" => Error::InvalidArgument(message),
        "unavailable" => Error::Unavailable(message),
        "indeterminate" => Error::Indeterminate(message),
        "internal" => Error::Indeterminate(format!("server error: {message}")),
        _ => return None,
    })
}

pub(crate) fn error_to_status(error: &Error) -> Status {
    let (code, class) = class_of(error);
    let mut status = Status::new(code, error.to_string());
    status
        .metadata_mut()
        .insert(ERROR_KEY, MetadataValue::from_static(class));
    if let Error::NotLeader {
        leader: Some(leader),
    } = error
    {
        if let Ok(value) = leader.parse() {
            status.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    status
}

/// The inverse of `error_to_status`. A status not made by a Lattice node
/// (a transport failure, a deadline) comes back as `Indeterminate`, or as
/// `Unavailable` when the connection was never made.
pub fn status_to_error(status: &Status) -> Error {
    let metadata = |key| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let class = metadata(ERROR_KEY).unwrap_or_default();
    // A transport failure says what failed only in its sources.
    let message = crate::error::with_sources(status, status.message().to_string());
    if let Some(error) = error_of_class(&class, message.clone(), metadata(LEADER_KEY)) {
        return error;
    }
    if status.code() == Code::InvalidArgument {
        Error::InvalidArgument(message)
    } else if is_connect_failure(status.code(), &message) {
        Error::Unavailable(format!("cannot connect: {message}"))
    } else {
        Error::Indeterminate(format!("{:?}: {message}", status.code()))
    }
}

/// An error as one answer of a `Batch` stream.
pub(crate) fn error_to_proto(error: &Error) -> proto::KvError {
    let leader = match error {
        Error::NotLeader {
            leader: Some(leader),
        } => leader.clone(),
        _ => String::new(),
    };
    proto::KvError {
        class: class_of(error).1.to_string(),
        message: error.to_string(),
        leader,
    }
}

/// The inverse of `error_to_proto`. An unknown class is an answer this
/// client cannot read, so whether the operation happened is unknown.
pub fn error_from_proto(error: proto::KvError) -> Error {
    let leader = (!error.leader.is_empty()).then_some(error.leader);
    let unknown = format!("unknown error class {:?}: {}", error.class, error.message);
    error_of_class(&error.class, error.message, leader).unwrap_or(Error::Indeterminate(unknown))
}

/// Whether the request certainly never left: the connection could not be
/// made (`message`: the status's, with its sources).
fn is_connect_failure(code: Code, message: &str) -> bool {
    if code != Code::Unavailable {
        return false;
    }
    let text = message.to_lowercase();
    text.contains("connect") && !text.contains("connection reset") && !text.contains("closed")
}

pub(crate) fn entry_from_proto(entry: proto::Entry) -> Entry {
    Entry {
        term: Term(entry.term),
        index: LogIndex(entry.index),
        data: entry.data,
    }
}

pub(crate) fn entry_to_proto(entry: Entry) -> proto::Entry {
    proto::Entry {
        term: entry.term.0,
        index: entry.index.0,
        data: entry.data,
    }
}

pub(crate) fn request_vote_to_proto(
    from: NodeId,
    to: NodeId,
    m: RequestVote,
) -> proto::RequestVoteRequest {
    proto::RequestVoteRequest {
        from: from.0,
        to: to.0,
        term: m.term.0,
        last_log_index: m.last_log_index.0,
        last_log_term: m.last_log_term.0,
        pre_vote: m.pre_vote,
        transfer: m.transfer,
    }
}

pub(crate) fn request_vote_from_proto(m: &proto::RequestVoteRequest) -> RequestVote {
    RequestVote {
        term: Term(m.term),
        candidate: NodeId(m.from),
        last_log_index: LogIndex(m.last_log_index),
        last_log_term: Term(m.last_log_term),
        pre_vote: m.pre_vote,
        transfer: m.transfer,
    }
}

pub(crate) fn request_vote_response_to_proto(
    from: NodeId,
    m: RequestVoteResponse,
) -> proto::RequestVoteResponse {
    proto::RequestVoteResponse {
        from: from.0,
        term: m.term.0,
        vote_granted: m.vote_granted,
        pre_vote: m.pre_vote,
    }
}

pub(crate) fn request_vote_response_from_proto(
    m: proto::RequestVoteResponse,
) -> RequestVoteResponse {
    RequestVoteResponse {
        term: Term(m.term),
        vote_granted: m.vote_granted,
        pre_vote: m.pre_vote,
    }
}

pub(crate) fn append_entries_to_proto(
    from: NodeId,
    to: NodeId,
    m: AppendEntries,
) -> proto::AppendEntriesRequest {
    proto::AppendEntriesRequest {
        from: from.0,
        to: to.0,
        term: m.term.0,
        prev_log_index: m.prev_log_index.0,
        prev_log_term: m.prev_log_term.0,
        entries: m.entries.into_iter().map(entry_to_proto).collect(),
        leader_commit: m.leader_commit.0,
        read_round: m.read_round,
    }
}

pub(crate) fn append_entries_from_proto(m: proto::AppendEntriesRequest) -> AppendEntries {
    AppendEntries {
        term: Term(m.term),
        leader: NodeId(m.from),
        prev_log_index: LogIndex(m.prev_log_index),
        prev_log_term: Term(m.prev_log_term),
        entries: m.entries.into_iter().map(entry_from_proto).collect(),
        leader_commit: LogIndex(m.leader_commit),
        read_round: m.read_round,
    }
}

pub(crate) fn append_entries_response_to_proto(
    from: NodeId,
    m: AppendEntriesResponse,
) -> proto::AppendEntriesResponse {
    proto::AppendEntriesResponse {
        from: from.0,
        term: m.term.0,
        success: m.success,
        match_index: m.match_index.0,
        conflict_term: m.conflict_term.0,
        conflict_index: m.conflict_index.0,
        read_round: m.read_round,
        rejected_index: m.rejected_index.0,
    }
}

pub(crate) fn append_entries_response_from_proto(
    m: proto::AppendEntriesResponse,
) -> AppendEntriesResponse {
    AppendEntriesResponse {
        term: Term(m.term),
        success: m.success,
        match_index: LogIndex(m.match_index),
        conflict_term: Term(m.conflict_term),
        conflict_index: LogIndex(m.conflict_index),
        read_round: m.read_round,
        rejected_index: LogIndex(m.rejected_index),
    }
}

pub(crate) fn timeout_now_to_proto(
    from: NodeId,
    to: NodeId,
    m: TimeoutNow,
) -> proto::TimeoutNowRequest {
    proto::TimeoutNowRequest {
        from: from.0,
        to: to.0,
        term: m.term.0,
        last_log_index: m.last_log_index.0,
        last_log_term: m.last_log_term.0,
    }
}

pub(crate) fn timeout_now_from_proto(m: &proto::TimeoutNowRequest) -> TimeoutNow {
    TimeoutNow {
        term: Term(m.term),
        leader: NodeId(m.from),
        last_log_index: LogIndex(m.last_log_index),
        last_log_term: Term(m.last_log_term),
    }
}
