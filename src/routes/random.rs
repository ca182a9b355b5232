//! /v1/random replies.

use super::late::Shape;
use super::{App, negotiate};
use crate::access::Caller;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::parse::Request;
use crate::http::response::ContentType;
use crate::reply::output::Output;
use crate::services::random::{self, RandomQuery};

impl App {
    pub(super) fn random(
        &mut self,
        caller: &Caller,
        request: &Request<'_>,
        out: &mut Output,
        shape: &Shape,
    ) -> Result<(), ApiError> {
        let format = negotiate(request, Format::Json)?;
        let query = RandomQuery::parse(request.query).map_err(|e| ApiError::BadQuery {
            message: e.message(),
        })?;
        let values = u32::from(query.count.unwrap_or(1));
        self.charge(caller, values.div_ceil(RANDOM_VALUES_PER_TOKEN))?;
        self.draws.clear();
        for _ in 0..query.count.unwrap_or(1) {
            let value = self
                .random
                .uniform(query.min, query.max)
                .map_err(|_| ApiError::RandomUnavailable)?;
            self.draws.push(value);
        }
        self.body.clear();
        let content_type = match format {
            Format::Json => {
                random::write_json(&mut self.body, &query, &self.draws);
                ContentType::Json
            }
            Format::Text => {
                random::write_text(&mut self.body, &self.draws);
                ContentType::Text
            }
        };
        self.write_no_store(out, shape, content_type, &self.body);
        Ok(())
    }
}

/// /v1/random draws that cost one token (a thousand draws take about 30 µs).
const RANDOM_VALUES_PER_TOKEN: u32 = 100;
