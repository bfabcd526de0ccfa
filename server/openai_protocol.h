// The OpenAI wire format of /v1/completions and /v1/chat/completions,
// translated to and from the engine's plain structs (engine/serving/
// request.h). Parsing validates every field the way the OpenAI API (and
// vLLM's extensions top_k, min_p, repetition_penalty, ignore_eos) defines
// it; each error is an InvalidArgument status carrying the offending field
// (status_mapping.h WithParam), so the HTTP layer only has to map it.
// Tokenisation, the served-model check and the context-length check need
// the model and live in http_server.cc.
//
// Responses are built as nlohmann::json; StreamFormatter turns engine
// events into server-sent events. Token texts may be partial UTF-8
// characters: they are written as "bytes:\xNN..." and every dump replaces
// invalid UTF-8, so no engine output can make serialisation fail.
//
// Thread-safety: free functions are stateless; ResponseCollector and
// StreamFormatter are per request and not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/request.h"
#include "engine/tokenizer/chat_template.h"
#include "nlohmann/json.hpp"

namespace kvserve::server {

// Server-side caps a request is checked against (from EngineConfig).
struct ProtocolLimits {
  int max_n = 8;
  int max_logprobs = 20;
};

// Fields shared by both endpoints, range-checked.
struct CommonParams {
  std::optional<std::string> model;  // nullopt: the client did not name one
  std::optional<int> max_tokens;     // nullopt: the endpoint's default; else >= 1
  engine::SamplingOptions sampling;
  std::vector<std::string> stop;  // 0..4 non-empty strings
  int n = 1;                      // 1..max_n
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // vLLM extension
  // kvserve extension: {"policy": name, "ratio": (0, 1]}; either key may be
  // left out (the server default's value is used for it).
  std::optional<std::string> kv_policy;
  std::optional<double> kv_ratio;
  // kv_compression.prefill_chunk_tokens: see GenerationRequest; 0 = unset.
  int kv_prefill_chunk_tokens = 0;
};

struct CompletionRequest {
  CommonParams common;
  // Exactly one of these: the prompt as text, or as token ids (each >= 0;
  // the vocabulary bound is checked by the caller).
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_tokens;
  int logprobs = -1;  // -1: none; else 0..max_logprobs alternatives per token
  bool echo = false;
};

struct ChatRequest {
  CommonParams common;
  std::vector<tokenizer::ChatMessage> messages;  // non-empty; "developer" mapped to "system"
  bool logprobs = false;
  int top_logprobs = 0;               // 0..max_logprobs, only with logprobs
  bool add_generation_prompt = true;  // vLLM extension
};

// Parse and validate a request body. InvalidArgument (with param) for
// malformed JSON, wrong types, out-of-range values, unknown fields and
// unsupported features (suffix, best_of > n, logit_bias, tools, ...).
absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body,
                                                         const ProtocolLimits& limits);
absl::StatusOr<ChatRequest> ParseChatRequest(std::string_view body, const ProtocolLimits& limits);

// The engine request for the parsed fields. `logprobs`: -1 or the number of
// alternatives; `prompt_logprobs` for completions' echo + logprobs.
engine::GenerationRequest ToGenerationRequest(const CommonParams& params, std::string request_id,
                                              std::vector<int32_t> prompt, int max_tokens,
                                              int logprobs, bool prompt_logprobs);

// "cmpl-" / "chatcmpl-" style ids: the prefix plus 24 random hex digits.
std::string RandomId(std::string_view prefix);

// nlohmann's dump with invalid UTF-8 replaced by U+FFFD instead of throwing.
std::string DumpJson(const nlohmann::json& j);

// How a token's bytes are shown in logprobs: the text itself when it is
// valid UTF-8, else "bytes:" followed by \xNN escapes of every byte.
std::string TokenDisplayString(std::string_view bytes);

// "stop", "length", or null (unfinished, aborted, failed).
nlohmann::json FinishReasonJson(engine::FinishReason reason);

// The KV cache a request's choices ended with (summed over choices).
struct KvUsage {
  int64_t bytes = 0;
  int64_t bytes_uncompressed = 0;
  int cached_tokens = 0;  // prompt tokens served from the prefix cache
};

// {prompt_tokens, completion_tokens, total_tokens} plus, when `kv` is given,
// prompt_tokens_details.cached_tokens (as OpenAI reports prefix-cache hits)
// and the kvserve fields kv_bytes, kv_bytes_uncompressed,
// kv_compression_ratio (bytes / bytes_uncompressed; 1 when nothing was
// cached).
nlohmann::json UsageJson(int prompt_tokens, int completion_tokens, const KvUsage* kv = nullptr);

// id -> the token's bytes (tokenizer::Tokenizer::TokenToPiece).
using TokenPieceFn = std::function<std::string(int32_t)>;

// OpenAI completions "logprobs" object {tokens, token_logprobs, top_logprobs,
// text_offset} for `entries`. top_logprobs maps each alternative's text (and
// the chosen token's) to its log-probability. `*text_offset` is the offset
// in characters (code points) of the first entry in the returned text and
// is advanced past all entries. With `first_unscored`, the first entry (the
// first prompt token, which has no context) gets null logprob and top.
nlohmann::json CompletionLogprobsJson(const std::vector<engine::TokenLogprob>& entries,
                                      const TokenPieceFn& piece, int* text_offset,
                                      bool first_unscored = false);

// OpenAI chat "logprobs" object {content: [{token, logprob, bytes,
// top_logprobs: [{token, logprob, bytes}]}]}.
nlohmann::json ChatLogprobsJson(const std::vector<engine::TokenLogprob>& entries,
                                const TokenPieceFn& piece);

// Identity of one response, repeated in every chunk.
struct ResponseMeta {
  std::string id;
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// Output of one choice, folded from its events.
struct ChoiceOutput {
  std::string text;
  std::vector<engine::TokenLogprob> logprobs;
  engine::FinishReason finish = engine::FinishReason::kNone;
  int completion_tokens = 0;
  int64_t kv_bytes = 0;
  int64_t kv_bytes_uncompressed = 0;
  int cached_tokens = 0;
};

// Folds the events of an n-choice request (non-streaming responses).
class ResponseCollector {
 public:
  explicit ResponseCollector(int n) : choices_(n) {}
  // Ok for normal events. An error event yields its status; an abort the
  // engine did on its own (shutdown) yields Unavailable. Out-of-range choice
  // indices are Internal.
  absl::Status Add(engine::StreamEvent event);
  bool AllFinished() const;
  const std::vector<ChoiceOutput>& choices() const { return choices_; }
  const std::vector<engine::TokenLogprob>& prompt_logprobs() const { return prompt_logprobs_; }
  int completion_tokens() const;
  KvUsage kv_usage() const;

 private:
  std::vector<ChoiceOutput> choices_;
  std::vector<engine::TokenLogprob> prompt_logprobs_;
};

// What the response formats need to know about the request.
struct ResponseOptions {
  bool logprobs = false;        // completions: logprobs >= 0; chat: logprobs == true
  bool echo = false;            // completions only
  std::string echo_text;        // the prompt as text (echo)
  std::vector<int32_t> prompt;  // prompt ids (echo + logprobs: the first one is unscored)
  int prompt_tokens = 0;
  bool include_usage = false;  // streaming only
};

nlohmann::json CompletionResponseJson(const ResponseMeta& meta, const ResponseCollector& collected,
                                      const ResponseOptions& options, const TokenPieceFn& piece);
nlohmann::json ChatResponseJson(const ResponseMeta& meta, const ResponseCollector& collected,
                                const ResponseOptions& options, const TokenPieceFn& piece);

// "data: {json}\n\n".
std::string SseEvent(const nlohmann::json& j);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

// Turns the event stream of one request into server-sent events in the
// OpenAI chunk format (text_completion / chat.completion.chunk).
class StreamFormatter {
 public:
  enum class Kind { kCompletion, kChat };
  StreamFormatter(Kind kind, ResponseMeta meta, int n, ResponseOptions options, TokenPieceFn piece);

  // SSE text for one event (possibly several chunks, possibly empty). A
  // non-ok status for error events and engine-initiated aborts: the caller
  // then sends ErrorEvent() and ends the stream.
  absl::StatusOr<std::string> OnEvent(const engine::StreamEvent& event);
  // The usage chunk (if include_usage) and "data: [DONE]".
  std::string Finish() const;
  // data: {"error": {...}} for a failure after the stream began.
  static std::string ErrorEvent(const absl::Status& status);

 private:
  nlohmann::json Chunk(nlohmann::json choice) const;
  nlohmann::json ChoiceLogprobs(int choice, const std::vector<engine::TokenLogprob>& lps,
                                bool first_unscored);

  Kind kind_;
  ResponseMeta meta_;
  ResponseOptions options_;
  TokenPieceFn piece_;
  std::vector<bool> started_;     // per choice: first chunk sent
  std::vector<int> text_offset_;  // per choice, completions logprobs
  std::vector<int> completion_tokens_;
  KvUsage kv_usage_;
  std::vector<engine::TokenLogprob> prompt_logprobs_;
};

}  // namespace kvserve::server
