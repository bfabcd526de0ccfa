// Translation between the kvserve.v1 wire messages (proto/kvserve/v1/
// inference.proto) and the engine's plain structs (engine/serving/request.h).
// Proto types go no further into the code base than this and grpc_server.cc.
//
// Thread-safety: stateless functions; CompleteAccumulator is per request and
// not thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/serving/request.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvserve/v1/inference.pb.h"

namespace kvserve::server {

// Most stop strings one request may carry.
inline constexpr int kMaxStopStrings = 16;

// Checks `request` and builds the engine's request: the named model must be
// `model_name` (or empty; NotFound otherwise), exactly one input must be
// set, and the numeric fields must lie in the ranges the proto documents
// (InvalidArgument naming the field otherwise). kv_compression.policy must be
// empty or one of kvcache::CompressionPolicyNames() and kv_compression.ratio
// 0 or in (0, 1]; the zero values pass through as "" / 0 for the engine to
// replace with its defaults. Text prompts are encoded with `tokenizer`,
// chats rendered with its chat template first. Limits that depend on the
// engine's configuration (context length, n and logprobs caps, token ids
// within the vocabulary) are left to Engine::Submit.
absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request,
                                                              const std::string& model_name,
                                                              const tokenizer::Tokenizer& tokenizer,
                                                              std::string request_id);

// The wire value of a finish reason; kNone maps to UNSPECIFIED. kAbort and
// kError have no wire value (they end the call with a status instead) and
// must not be passed.
v1::FinishReason ToProtoFinishReason(engine::FinishReason finish);

// Fills `out` from `logprob`, with the bytes of every token taken from
// `tokenizer`.
void ToProtoLogprob(const engine::TokenLogprob& logprob, const tokenizer::Tokenizer& tokenizer,
                    v1::TokenLogprob* out);

// One streamed message for `event`, which must not be an abort or error
// event. A final event's usage carries its token counts and KV bytes.
v1::GenerateResponse ToGenerateResponse(const engine::StreamEvent& event,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const std::string& request_id);

// Collects the events of one request into a CompleteResponse. Its usage
// sums completion tokens and KV bytes over the choices.
class CompleteAccumulator {
 public:
  // `tokenizer` is not owned and must outlive this object. `n` is the
  // request's number of choices.
  CompleteAccumulator(const tokenizer::Tokenizer* tokenizer, int n, std::string model,
                      std::string request_id);

  // Adds one event, which must not be an abort or error event. Internal if
  // its choice index is outside [0, n).
  absl::Status Add(const engine::StreamEvent& event);

  // The response so far; complete once every choice has had its final
  // event.
  const v1::CompleteResponse& response() const { return response_; }

 private:
  const tokenizer::Tokenizer* tokenizer_;  // not owned
  v1::CompleteResponse response_;
  std::vector<bool> finished_;  // by choice index
};

}  // namespace kvserve::server
