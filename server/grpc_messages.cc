#include "server/grpc_messages.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "engine/tokenizer/chat_template.h"
#include "kvcache/compression_policy.h"

namespace kvserve::server {
namespace {

absl::Status OutOfRange(const char* field, float value, const char* range) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", range, " (got ", value, ")"));
}

// Sampling fields: proto3 defaults (0) mean "off" except where the proto
// marks the field optional, whose unset value is the engine's default.
absl::Status FillSampling(const v1::GenerateRequest& r, engine::SamplingOptions* s) {
  if (r.has_temperature()) {
    if (!std::isfinite(r.temperature()) || r.temperature() < 0) {
      return OutOfRange("temperature", r.temperature(), ">= 0");
    }
    s->temperature = r.temperature();
  }
  if (r.has_top_p()) {
    if (!(r.top_p() > 0 && r.top_p() <= 1)) return OutOfRange("top_p", r.top_p(), "in (0, 1]");
    s->top_p = r.top_p();
  }
  if (r.top_k() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (got ", r.top_k(), ")"));
  }
  s->top_k = r.top_k();
  if (!(r.min_p() >= 0 && r.min_p() <= 1)) return OutOfRange("min_p", r.min_p(), "in [0, 1]");
  s->min_p = r.min_p();
  if (r.has_seed()) s->seed = r.seed();
  if (!(r.presence_penalty() >= -2 && r.presence_penalty() <= 2)) {
    return OutOfRange("presence_penalty", r.presence_penalty(), "in [-2, 2]");
  }
  s->presence_penalty = r.presence_penalty();
  if (!(r.frequency_penalty() >= -2 && r.frequency_penalty() <= 2)) {
    return OutOfRange("frequency_penalty", r.frequency_penalty(), "in [-2, 2]");
  }
  s->frequency_penalty = r.frequency_penalty();
  if (r.has_repetition_penalty()) {
    if (!std::isfinite(r.repetition_penalty()) || r.repetition_penalty() <= 0) {
      return OutOfRange("repetition_penalty", r.repetition_penalty(), "> 0");
    }
    s->repetition_penalty = r.repetition_penalty();
  }
  return absl::OkStatus();
}

// Checked here, before the request is queued, with the same rules the
// engine applies once it has filled in the server defaults: an unknown policy
// or a ratio outside (0, 1] is the caller's error either way.
absl::Status FillKvCompression(const v1::GenerateRequest& r, engine::GenerationRequest* out) {
  if (!r.has_kv_compression()) return absl::OkStatus();
  const v1::KvCompression& kv = r.kv_compression();
  if (!kv.policy().empty()) {
    if (!kvcache::IsCompressionPolicy(kv.policy())) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_compression.policy '", kv.policy(),
                       "' is not a known policy; valid: ", kvcache::CompressionPolicyNameList()));
    }
  }
  // 0 is proto3's "unset"; NaN fails the range test.
  if (kv.ratio() != 0 && !(kv.ratio() > 0 && kv.ratio() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_compression.ratio must be in (0, 1], or 0 for the server default (got ",
                     kv.ratio(), ")"));
  }
  // Empty halves are the engine's to fill in from its configuration.
  out->kv_compression = kvcache::KvCompressionSpec{kv.policy(), kv.ratio()};
  if (kv.prefill_chunk_tokens() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("kv_compression.prefill_chunk_tokens is too large");
  }
  out->prefill_chunk_tokens = static_cast<int>(kv.prefill_chunk_tokens());
  return absl::OkStatus();
}

// Sets the KV fields of `usage` from byte totals; the ratio is 1 when
// nothing was cached, as the HTTP API reports it.
void SetKvUsage(int64_t bytes, int64_t bytes_uncompressed, v1::Usage* usage) {
  usage->set_kv_bytes(bytes);
  usage->set_kv_bytes_uncompressed(bytes_uncompressed);
  usage->set_kv_compression_ratio(
      bytes_uncompressed > 0 ? static_cast<double>(bytes) / static_cast<double>(bytes_uncompressed)
                             : 1.0);
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const v1::ChatMessages& chat,
                                                const tokenizer::Tokenizer& tok) {
  if (chat.messages().empty()) return absl::InvalidArgumentError("chat has no messages");
  std::vector<tokenizer::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (const v1::ChatMessage& m : chat.messages()) messages.push_back({m.role(), m.content()});
  const std::string& bos_text = tok.TokenText(tok.bos_id());
  absl::StatusOr<std::string> text =
      tokenizer::ApplyChatTemplate(tok.chat_template(), messages, /*add_generation_prompt=*/true,
                                   bos_text, tok.TokenText(tok.eos_id()));
  if (!text.ok()) {
    // A missing or unsupported template is the server's condition, not a
    // request for something that does not exist.
    if (absl::IsNotFound(text.status())) {
      return absl::FailedPreconditionError(
          absl::StrCat("the model has no chat template: ", text.status().message()));
    }
    return text.status();
  }
  // Templates that write the BOS text themselves get no second BOS.
  const bool add_bos = tok.add_bos() && !(!bos_text.empty() && absl::StartsWith(*text, bos_text));
  return tok.Encode(*text, add_bos, /*parse_special=*/true);
}

absl::StatusOr<std::vector<int32_t>> EncodeInput(const v1::GenerateRequest& r,
                                                 const tokenizer::Tokenizer& tok) {
  switch (r.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      std::vector<int32_t> ids = tok.Encode(r.prompt(), tok.add_bos(), /*parse_special=*/false);
      if (ids.empty()) return absl::InvalidArgumentError("prompt encodes to no tokens");
      return ids;
    }
    case v1::GenerateRequest::kPromptTokens:
      if (r.prompt_tokens().ids().empty()) {
        return absl::InvalidArgumentError("prompt_tokens is empty");
      }
      return std::vector<int32_t>(r.prompt_tokens().ids().begin(), r.prompt_tokens().ids().end());
    case v1::GenerateRequest::kChat:
      return EncodeChat(r.chat(), tok);
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("one of prompt, prompt_tokens or chat is required");
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& r,
                                                              const std::string& model_name,
                                                              const tokenizer::Tokenizer& tokenizer,
                                                              std::string request_id) {
  if (!r.model().empty() && r.model() != model_name) {
    return absl::NotFoundError(absl::StrCat(
        "model '", r.model(), "' is not served here (this server serves '", model_name, "')"));
  }
  engine::GenerationRequest out;
  out.request_id = std::move(request_id);
  if (r.has_max_tokens()) {
    if (r.max_tokens() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_tokens must be >= 1 (got ", r.max_tokens(), ")"));
    }
    out.max_tokens = r.max_tokens();
  }
  if (absl::Status s = FillSampling(r, &out.sampling); !s.ok()) return s;
  if (r.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxStopStrings, " stop strings (got ", r.stop_size(), ")"));
  }
  for (const std::string& stop : r.stop()) {
    if (stop.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
    out.stop.push_back(stop);
  }
  if (r.has_n()) {
    if (r.n() < 1)
      return absl::InvalidArgumentError(absl::StrCat("n must be >= 1 (got ", r.n(), ")"));
    out.n = r.n();
  }
  if (r.has_logprobs()) {
    if (r.logprobs() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs must be >= 0 (got ", r.logprobs(), ")"));
    }
    out.logprobs = r.logprobs();
  }
  out.ignore_eos = r.ignore_eos();
  out.prompt_logprobs = r.prompt_logprobs();
  if (absl::Status s = FillKvCompression(r, &out); !s.ok()) return s;
  // Tokenizing last: the cheap checks above fail fast on long prompts.
  absl::StatusOr<std::vector<int32_t>> prompt = EncodeInput(r, tokenizer);
  if (!prompt.ok()) return prompt.status();
  out.prompt = *std::move(prompt);
  return out;
}

v1::FinishReason ToProtoFinishReason(engine::FinishReason finish) {
  switch (finish) {
    case engine::FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kAbort:
    case engine::FinishReason::kError:
      break;
  }
  KV_CHECK_MSG(false, "aborted and failed choices have no wire finish reason");
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ToProtoLogprob(const engine::TokenLogprob& logprob, const tokenizer::Tokenizer& tokenizer,
                    v1::TokenLogprob* out) {
  out->set_token_id(logprob.token);
  // The engine's text is the token's piece; the tokenizer gives the same
  // bytes for the alternatives, which the engine reports by id only.
  out->set_token(logprob.text);
  out->set_logprob(logprob.logprob);
  for (const auto& [id, lp] : logprob.top) {
    v1::TopLogprob* top = out->add_top_logprobs();
    top->set_token_id(id);
    top->set_token(tokenizer.TokenToPiece(id));
    top->set_logprob(lp);
  }
}

v1::GenerateResponse ToGenerateResponse(const engine::StreamEvent& event,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const std::string& request_id) {
  v1::GenerateResponse out;
  out.set_index(event.choice);
  out.set_text(event.text);
  out.mutable_token_ids()->Add(event.tokens.begin(), event.tokens.end());
  for (const engine::TokenLogprob& lp : event.logprobs) {
    ToProtoLogprob(lp, tokenizer, out.add_logprobs());
  }
  for (const engine::TokenLogprob& lp : event.prompt_logprobs) {
    ToProtoLogprob(lp, tokenizer, out.add_prompt_logprobs());
  }
  out.set_finish_reason(ToProtoFinishReason(event.finish));
  if (event.finish != engine::FinishReason::kNone) {
    out.mutable_usage()->set_prompt_tokens(event.prompt_tokens);
    out.mutable_usage()->set_completion_tokens(event.completion_tokens);
    out.mutable_usage()->set_cached_tokens(event.cached_tokens);
    SetKvUsage(event.kv_bytes, event.kv_bytes_uncompressed, out.mutable_usage());
  }
  out.set_request_id(request_id);
  return out;
}

CompleteAccumulator::CompleteAccumulator(const tokenizer::Tokenizer* tokenizer, int n,
                                         std::string model, std::string request_id)
    : tokenizer_(tokenizer), finished_(n, false) {
  KV_CHECK(n >= 1);
  response_.set_model(std::move(model));
  response_.set_request_id(std::move(request_id));
  for (int i = 0; i < n; ++i) response_.add_choices()->set_index(i);
  SetKvUsage(0, 0, response_.mutable_usage());  // present even before the first final event
}

absl::Status CompleteAccumulator::Add(const engine::StreamEvent& event) {
  if (event.choice < 0 || event.choice >= response_.choices_size()) {
    return absl::InternalError(absl::StrCat("event for choice ", event.choice,
                                            " of a request with ", response_.choices_size(),
                                            " choices"));
  }
  if (finished_[event.choice]) {
    return absl::InternalError(absl::StrCat("event after the end of choice ", event.choice));
  }
  v1::Choice* choice = response_.mutable_choices(event.choice);
  choice->mutable_text()->append(event.text);
  choice->mutable_token_ids()->Add(event.tokens.begin(), event.tokens.end());
  for (const engine::TokenLogprob& lp : event.logprobs) {
    ToProtoLogprob(lp, *tokenizer_, choice->add_logprobs());
  }
  for (const engine::TokenLogprob& lp : event.prompt_logprobs) {
    ToProtoLogprob(lp, *tokenizer_, response_.add_prompt_logprobs());
  }
  if (event.finish != engine::FinishReason::kNone) {
    choice->set_finish_reason(ToProtoFinishReason(event.finish));
    finished_[event.choice] = true;
    v1::Usage* usage = response_.mutable_usage();
    // Every choice shares the prompt; its count is the same on each.
    usage->set_prompt_tokens(event.prompt_tokens);
    usage->set_completion_tokens(usage->completion_tokens() + event.completion_tokens);
    usage->set_cached_tokens(std::max(usage->cached_tokens(), event.cached_tokens));
    SetKvUsage(usage->kv_bytes() + event.kv_bytes,
               usage->kv_bytes_uncompressed() + event.kv_bytes_uncompressed, usage);
  }
  return absl::OkStatus();
}

}  // namespace kvserve::server
