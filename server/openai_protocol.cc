#include "server/openai_protocol.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/status_mapping.h"

namespace kvserve::server {
namespace {

using nlohmann::json;

absl::Status Invalid(std::string_view param, std::string message) {
  return WithParam(absl::InvalidArgumentError(std::move(message)), param);
}

const char* JsonTypeName(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "an unsupported value";
  }
}

absl::Status TypeError(std::string_view param, std::string_view expected, const json& got) {
  return Invalid(param, absl::StrCat("'", std::string(param), "' must be ", std::string(expected),
                                     ", got ", JsonTypeName(got)));
}

// An integer-valued JSON number as int64; nullopt if it is not one (a
// fraction, or beyond int64).
std::optional<int64_t> AsInt64(const json& j) {
  if (j.is_number_integer() && !j.is_number_unsigned()) return j.get<int64_t>();
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (j.is_number_float()) {
    const double d = j.get<double>();
    // 2^63 is exactly representable; anything at or above it does not fit.
    if (std::isfinite(d) && d == std::floor(d) && d >= -9.2233720368547758e18 &&
        d < 9.2233720368547758e18) {
      return static_cast<int64_t>(d);
    }
  }
  return std::nullopt;
}

std::string FormatNumber(double v) { return absl::StrCat(v); }

// Reads the fields of one JSON object, remembering which keys were read so
// that whatever remains can be reported as unknown. Null values count as
// absent, since many clients send null for "not given".
class ObjectReader {
 public:
  // `prefix` is prepended to field names in params ("messages[0].").
  ObjectReader(const json& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  std::string Param(std::string_view key) const { return absl::StrCat(prefix_, std::string(key)); }

  // The value, or nullptr when absent or null.
  const json* Get(std::string_view key) {
    seen_.insert(std::string(key));
    auto it = obj_.find(std::string(key));
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Bool(std::string_view key, bool* out) {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return TypeError(Param(key), "a boolean", *v);
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(std::string_view key, std::optional<std::string>* out) {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return TypeError(Param(key), "a string", *v);
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

  // A number in [lo, hi] (open at lo when lo_open); `range` describes it.
  absl::Status Number(std::string_view key, double lo, double hi, bool lo_open,
                      std::string_view range, float* out) {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return TypeError(Param(key), "a number", *v);
    const double d = v->get<double>();
    if (!(lo_open ? d > lo : d >= lo) || !(d <= hi)) {
      return Invalid(Param(key), absl::StrCat("'", Param(key), "' must be ", std::string(range),
                                              ", got ", FormatNumber(d)));
    }
    *out = static_cast<float>(d);
    return absl::OkStatus();
  }

  absl::Status Int(std::string_view key, int64_t lo, int64_t hi, std::string_view range,
                   std::optional<int64_t>* out) {
    const json* v = Get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return TypeError(Param(key), "an integer", *v);
    std::optional<int64_t> i = AsInt64(*v);
    if (!i.has_value()) {
      if (v->is_number_float() && std::isfinite(v->get<double>()) &&
          v->get<double>() == std::floor(v->get<double>())) {
        return Invalid(Param(key), absl::StrCat("'", Param(key), "' must be ", std::string(range),
                                                ", got ", FormatNumber(v->get<double>())));
      }
      if (v->is_number_unsigned()) {
        return Invalid(Param(key), absl::StrCat("'", Param(key), "' must be ", std::string(range),
                                                ", got ", v->get<uint64_t>()));
      }
      return TypeError(Param(key), "an integer", *v);
    }
    if (*i < lo || *i > hi) {
      return Invalid(Param(key),
                     absl::StrCat("'", Param(key), "' must be ", std::string(range), ", got ", *i));
    }
    *out = *i;
    return absl::OkStatus();
  }

  // InvalidArgument naming the first key that no getter asked for.
  absl::Status CheckNoUnknownKeys() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (!seen_.count(it.key())) {
        return Invalid(Param(it.key()),
                       absl::StrCat("unrecognized request argument '", Param(it.key()), "'"));
      }
    }
    return absl::OkStatus();
  }

 private:
  const json& obj_;
  std::string prefix_;
  std::set<std::string> seen_;
};

#define KV_RETURN_IF_ERROR(expr)             \
  do {                                       \
    absl::Status kv_status_ = (expr);        \
    if (!kv_status_.ok()) return kv_status_; \
  } while (0)

absl::StatusOr<json> ParseBody(std::string_view body) {
  json j = json::parse(body.begin(), body.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError("the request body is not valid JSON");
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body must be a JSON object, got ", JsonTypeName(j)));
  }
  return j;
}

// A field that must be absent, null, or the given neutral value.
absl::Status RejectUnsupported(ObjectReader& r, std::string_view key, std::string_view what) {
  const json* v = r.Get(key);
  if (v == nullptr) return absl::OkStatus();
  const bool empty = (v->is_string() && v->get<std::string>().empty()) ||
                     (v->is_object() && v->empty()) || (v->is_array() && v->empty());
  if (empty) return absl::OkStatus();
  return Invalid(r.Param(key),
                 absl::StrCat("'", std::string(key), "' is not supported: ", std::string(what)));
}

// Fields shared by both endpoints. `max_tokens_keys` lists the accepted
// spellings, the first one present (and not null) winning.
absl::Status ParseCommon(ObjectReader& r, const ProtocolLimits& limits,
                         const std::vector<std::string_view>& max_tokens_keys, CommonParams* p) {
  KV_RETURN_IF_ERROR(r.String("model", &p->model));
  for (std::string_view key : max_tokens_keys) {
    std::optional<int64_t> v;
    KV_RETURN_IF_ERROR(r.Int(key, 1, std::numeric_limits<int32_t>::max(), "an integer >= 1", &v));
    if (v.has_value() && !p->max_tokens.has_value()) p->max_tokens = static_cast<int>(*v);
  }
  engine::SamplingOptions& s = p->sampling;
  KV_RETURN_IF_ERROR(r.Number("temperature", 0, 2, false, "between 0 and 2", &s.temperature));
  KV_RETURN_IF_ERROR(r.Number("top_p", 0, 1, true, "in (0, 1]", &s.top_p));
  {
    // vLLM spells "off" as -1; the engine as 0.
    std::optional<int64_t> top_k;
    KV_RETURN_IF_ERROR(r.Int("top_k", -1, std::numeric_limits<int32_t>::max(),
                             "-1 (off), 0 (off) or a positive integer", &top_k));
    if (top_k.has_value()) s.top_k = *top_k < 0 ? 0 : static_cast<int>(*top_k);
  }
  KV_RETURN_IF_ERROR(r.Number("min_p", 0, 1, false, "between 0 and 1", &s.min_p));
  KV_RETURN_IF_ERROR(
      r.Number("presence_penalty", -2, 2, false, "between -2 and 2", &s.presence_penalty));
  KV_RETURN_IF_ERROR(
      r.Number("frequency_penalty", -2, 2, false, "between -2 and 2", &s.frequency_penalty));
  KV_RETURN_IF_ERROR(r.Number("repetition_penalty", 0, std::numeric_limits<float>::max(), true,
                              "a number > 0", &s.repetition_penalty));
  {
    const json* v = r.Get("seed");
    if (v != nullptr) {
      if (!v->is_number_integer()) {
        return TypeError(r.Param("seed"), "an integer", *v);
      }
      s.seed =
          v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
    }
  }
  {
    std::optional<int64_t> n;
    KV_RETURN_IF_ERROR(
        r.Int("n", 1, limits.max_n, absl::StrCat("between 1 and ", limits.max_n), &n));
    if (n.has_value()) p->n = static_cast<int>(*n);
    // best_of picks the best of several samples; only the trivial case
    // best_of == n (every sample returned) is what this server does.
    std::optional<int64_t> best_of;
    KV_RETURN_IF_ERROR(
        r.Int("best_of", 1, std::numeric_limits<int32_t>::max(), "an integer >= 1", &best_of));
    if (best_of.has_value() && *best_of != p->n) {
      return Invalid(r.Param("best_of"),
                     absl::StrCat("'best_of' must equal n (", p->n, ") when given, got ", *best_of,
                                  ": best-of-n selection is not supported"));
    }
  }
  if (const json* v = r.Get("stop"); v != nullptr) {
    if (v->is_string()) {
      p->stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 4) {
        return Invalid(r.Param("stop"),
                       absl::StrCat("'stop' takes at most 4 sequences, got ", v->size()));
      }
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) {
          return TypeError(absl::StrCat(r.Param("stop"), "[", i, "]"), "a string", (*v)[i]);
        }
        p->stop.push_back((*v)[i].get<std::string>());
      }
    } else {
      return TypeError(r.Param("stop"), "a string or an array of strings", *v);
    }
    for (const std::string& s : p->stop) {
      if (s.empty()) return Invalid(r.Param("stop"), "'stop' sequences must not be empty");
    }
  }
  KV_RETURN_IF_ERROR(r.Bool("stream", &p->stream));
  if (const json* v = r.Get("stream_options"); v != nullptr) {
    if (!v->is_object()) return TypeError(r.Param("stream_options"), "an object", *v);
    if (!p->stream) {
      return Invalid(r.Param("stream_options"),
                     "'stream_options' is only allowed when 'stream' is true");
    }
    ObjectReader so(*v, r.Param("stream_options."));
    KV_RETURN_IF_ERROR(so.Bool("include_usage", &p->include_usage));
    bool continuous = false;  // vLLM's per-chunk usage; accepted when false only
    KV_RETURN_IF_ERROR(so.Bool("continuous_usage_stats", &continuous));
    if (continuous) {
      return Invalid(so.Param("continuous_usage_stats"),
                     "'continuous_usage_stats' is not supported");
    }
    KV_RETURN_IF_ERROR(so.CheckNoUnknownKeys());
  }
  KV_RETURN_IF_ERROR(r.Bool("ignore_eos", &p->ignore_eos));
  if (const json* v = r.Get("kv_compression"); v != nullptr) {
    if (!v->is_object()) return TypeError(r.Param("kv_compression"), "an object", *v);
    ObjectReader kv(*v, r.Param("kv_compression."));
    KV_RETURN_IF_ERROR(kv.String("policy", &p->kv_policy));
    if (p->kv_policy.has_value()) {
      if (!kvcache::IsCompressionPolicy(*p->kv_policy)) {
        return Invalid(kv.Param("policy"),
                       absl::StrCat("unknown KV compression policy '", *p->kv_policy,
                                    "'; valid: ", kvcache::CompressionPolicyNameList()));
      }
    }
    float ratio = 0;
    KV_RETURN_IF_ERROR(kv.Number("ratio", 0, 1, /*lo_open=*/true, "in (0, 1]", &ratio));
    if (kv.Get("ratio") != nullptr) p->kv_ratio = (*v)["ratio"].get<double>();
    std::optional<int64_t> chunk;
    KV_RETURN_IF_ERROR(kv.Int("prefill_chunk_tokens", 1, std::numeric_limits<int32_t>::max(),
                              "an integer >= 1", &chunk));
    p->kv_prefill_chunk_tokens = static_cast<int>(chunk.value_or(0));
    KV_RETURN_IF_ERROR(kv.CheckNoUnknownKeys());
  }
  std::optional<std::string> user;  // accepted and ignored, as OpenAI does for abuse tracking
  KV_RETURN_IF_ERROR(r.String("user", &user));
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "logit_bias", "token biases cannot be applied"));
  return absl::OkStatus();
}

// Text of a chat message's "content": a string or an array of text parts.
absl::StatusOr<std::string> MessageContent(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    return TypeError(param, "a string or an array of content parts", content);
  std::vector<std::string> texts;
  for (size_t i = 0; i < content.size(); ++i) {
    const std::string part_param = absl::StrCat(param, "[", i, "]");
    const json& part = content[i];
    if (!part.is_object()) return TypeError(part_param, "an object", part);
    ObjectReader pr(part, part_param + ".");
    std::optional<std::string> type, text;
    KV_RETURN_IF_ERROR(pr.String("type", &type));
    if (!type.has_value()) return Invalid(pr.Param("type"), "content parts need a 'type'");
    if (*type != "text") {
      return Invalid(pr.Param("type"), absl::StrCat("content part type '", *type,
                                                    "' is not supported (only 'text')"));
    }
    KV_RETURN_IF_ERROR(pr.String("text", &text));
    if (!text.has_value()) return Invalid(pr.Param("text"), "a text part needs 'text'");
    KV_RETURN_IF_ERROR(pr.CheckNoUnknownKeys());
    texts.push_back(std::move(*text));
  }
  return absl::StrJoin(texts, "\n");
}

absl::StatusOr<tokenizer::ChatMessage> ParseMessage(const json& m, size_t index) {
  const std::string param = absl::StrCat("messages[", index, "]");
  if (!m.is_object()) return TypeError(param, "an object", m);
  ObjectReader r(m, param + ".");
  std::optional<std::string> role, name;
  KV_RETURN_IF_ERROR(r.String("role", &role));
  if (!role.has_value()) return Invalid(r.Param("role"), "every message needs a 'role'");
  if (*role == "developer") role = "system";
  if (*role != "system" && *role != "user" && *role != "assistant") {
    return Invalid(
        r.Param("role"),
        absl::StrCat("role '", *role, "' is not supported (system, developer, user, assistant)"));
  }
  KV_RETURN_IF_ERROR(r.String("name", &name));  // accepted, not rendered by the templates
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "tool_calls", "this server does not call tools"));
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "function_call", "this server does not call tools"));
  tokenizer::ChatMessage out;
  out.role = *role;
  const json* content = r.Get("content");
  if (content == nullptr) {
    // OpenAI allows a null content only for assistant turns (tool calls).
    if (*role != "assistant") {
      return Invalid(r.Param("content"), absl::StrCat("a ", *role, " message needs 'content'"));
    }
  } else {
    auto text = MessageContent(*content, r.Param("content"));
    if (!text.ok()) return text.status();
    out.content = std::move(*text);
  }
  KV_RETURN_IF_ERROR(r.CheckNoUnknownKeys());
  return out;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Code points in `s`, counting each lead byte (and each stray byte) once,
// so that a character split across tokens is counted at its first token.
int CodePoints(std::string_view s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

double ClampLogprob(float lp) {
  // JSON has no -inf; -9999 is what vLLM reports for impossible tokens.
  return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0;
}

json BytesJson(std::string_view s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body,
                                                         const ProtocolLimits& limits) {
  auto parsed = ParseBody(body);
  if (!parsed.ok()) return parsed.status();
  const json& j = *parsed;
  ObjectReader r(j, "");
  CompletionRequest req;
  const json* prompt = r.Get("prompt");
  if (prompt == nullptr) return Invalid("prompt", "'prompt' is required");
  auto token_list = [&](const json& a, const std::string& param) -> absl::Status {
    for (size_t i = 0; i < a.size(); ++i) {
      std::optional<int64_t> id = AsInt64(a[i]);
      if (!a[i].is_number() || !id.has_value() || *id < 0 ||
          *id > std::numeric_limits<int32_t>::max()) {
        return Invalid(param, absl::StrCat("'", param,
                                           "' token ids must be non-negative "
                                           "integers; element ",
                                           i, " is not"));
      }
      req.prompt_tokens.push_back(static_cast<int32_t>(*id));
    }
    return absl::OkStatus();
  };
  if (prompt->is_string()) {
    req.prompt_text = prompt->get<std::string>();
  } else if (prompt->is_array()) {
    if (prompt->empty()) return Invalid("prompt", "'prompt' must not be empty");
    const json& first = (*prompt)[0];
    if (first.is_string() || first.is_array()) {
      // A batch of prompts: one per request is what this server serves.
      if (prompt->size() != 1) {
        return Invalid("prompt", absl::StrCat("'prompt' batches are not supported: send one "
                                              "prompt per request (got ",
                                              prompt->size(), ")"));
      }
      if (first.is_string()) {
        req.prompt_text = first.get<std::string>();
      } else {
        KV_RETURN_IF_ERROR(token_list(first, "prompt"));
      }
    } else {
      KV_RETURN_IF_ERROR(token_list(*prompt, "prompt"));
    }
  } else {
    return TypeError("prompt", "a string, an array of token ids, or an array of one string",
                     *prompt);
  }
  if (req.prompt_text.has_value() ? req.prompt_text->empty() : req.prompt_tokens.empty()) {
    return Invalid("prompt", "'prompt' must not be empty");
  }
  KV_RETURN_IF_ERROR(ParseCommon(r, limits, {"max_tokens"}, &req.common));
  std::optional<int64_t> logprobs;
  KV_RETURN_IF_ERROR(r.Int("logprobs", 0, limits.max_logprobs,
                           absl::StrCat("between 0 and ", limits.max_logprobs), &logprobs));
  if (logprobs.has_value()) req.logprobs = static_cast<int>(*logprobs);
  KV_RETURN_IF_ERROR(r.Bool("echo", &req.echo));
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "suffix",
                                       "insertion (fill-in-the-middle) is not "
                                       "available for this model"));
  KV_RETURN_IF_ERROR(r.CheckNoUnknownKeys());
  return req;
}

absl::StatusOr<ChatRequest> ParseChatRequest(std::string_view body, const ProtocolLimits& limits) {
  auto parsed = ParseBody(body);
  if (!parsed.ok()) return parsed.status();
  const json& j = *parsed;
  ObjectReader r(j, "");
  ChatRequest req;
  const json* messages = r.Get("messages");
  if (messages == nullptr) return Invalid("messages", "'messages' is required");
  if (!messages->is_array()) return TypeError("messages", "an array", *messages);
  if (messages->empty()) return Invalid("messages", "'messages' must not be empty");
  for (size_t i = 0; i < messages->size(); ++i) {
    auto m = ParseMessage((*messages)[i], i);
    if (!m.ok()) return m.status();
    req.messages.push_back(std::move(*m));
  }
  // max_completion_tokens replaced max_tokens in the OpenAI API; the newer
  // spelling wins when both are given.
  KV_RETURN_IF_ERROR(ParseCommon(r, limits, {"max_completion_tokens", "max_tokens"}, &req.common));
  KV_RETURN_IF_ERROR(r.Bool("logprobs", &req.logprobs));
  std::optional<int64_t> top;
  KV_RETURN_IF_ERROR(r.Int("top_logprobs", 0, limits.max_logprobs,
                           absl::StrCat("between 0 and ", limits.max_logprobs), &top));
  if (top.has_value()) {
    if (!req.logprobs) {
      return Invalid("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    }
    req.top_logprobs = static_cast<int>(*top);
  }
  KV_RETURN_IF_ERROR(r.Bool("add_generation_prompt", &req.add_generation_prompt));
  if (const json* rf = r.Get("response_format"); rf != nullptr) {
    if (!rf->is_object()) return TypeError("response_format", "an object", *rf);
    auto type = rf->find("type");
    if (rf->size() != 1 || type == rf->end() || *type != "text") {
      return Invalid("response_format",
                     "'response_format' is not supported beyond {\"type\": \"text\"}");
    }
  }
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "tools", "this server does not call tools"));
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "functions", "this server does not call tools"));
  KV_RETURN_IF_ERROR(RejectUnsupported(r, "function_call", "this server does not call tools"));
  if (const json* tc = r.Get("tool_choice"); tc != nullptr && *tc != "none" && *tc != "auto") {
    return Invalid("tool_choice",
                   "'tool_choice' is not supported: this server does not call "
                   "tools");
  }
  bool parallel = true;  // meaningless without tools; accepted for client compatibility
  KV_RETURN_IF_ERROR(r.Bool("parallel_tool_calls", &parallel));
  KV_RETURN_IF_ERROR(r.CheckNoUnknownKeys());
  return req;
}

#undef KV_RETURN_IF_ERROR

engine::GenerationRequest ToGenerationRequest(const CommonParams& params, std::string request_id,
                                              std::vector<int32_t> prompt, int max_tokens,
                                              int logprobs, bool prompt_logprobs) {
  engine::GenerationRequest g;
  g.request_id = std::move(request_id);
  g.prompt = std::move(prompt);
  g.max_tokens = max_tokens;
  g.sampling = params.sampling;
  g.stop = params.stop;
  g.ignore_eos = params.ignore_eos;
  g.n = params.n;
  g.logprobs = logprobs;
  g.prompt_logprobs = prompt_logprobs;
  g.prefill_chunk_tokens = params.kv_prefill_chunk_tokens;
  if (params.kv_policy || params.kv_ratio) {
    // The missing half comes from the engine's default, filled in there.
    g.kv_compression =
        kvcache::KvCompressionSpec{params.kv_policy.value_or(""), params.kv_ratio.value_or(0.0)};
  }
  return g;
}

std::string RandomId(std::string_view prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t a, b;
  {
    std::lock_guard<std::mutex> lock(mu);
    a = rng();
    b = rng();
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx%08llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b & 0xFFFFFFFFull));
  return absl::StrCat(std::string(prefix), buf);
}

std::string DumpJson(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string TokenDisplayString(std::string_view bytes) {
  if (IsValidUtf8(bytes)) return std::string(bytes);
  std::string out = "bytes:";
  char buf[8];
  for (unsigned char c : bytes) {
    std::snprintf(buf, sizeof(buf), "\\x%02x", c);
    out += buf;
  }
  return out;
}

nlohmann::json FinishReasonJson(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop:
      return "stop";
    case engine::FinishReason::kLength:
      return "length";
    default:
      return nullptr;
  }
}

nlohmann::json UsageJson(int prompt_tokens, int completion_tokens, const KvUsage* kv) {
  nlohmann::json u = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", completion_tokens},
                      {"total_tokens", prompt_tokens + completion_tokens}};
  if (kv != nullptr) {
    u["prompt_tokens_details"] = {{"cached_tokens", kv->cached_tokens}};
    u["kv_bytes"] = kv->bytes;
    u["kv_bytes_uncompressed"] = kv->bytes_uncompressed;
    u["kv_compression_ratio"] =
        kv->bytes_uncompressed > 0
            ? static_cast<double>(kv->bytes) / static_cast<double>(kv->bytes_uncompressed)
            : 1.0;
  }
  return u;
}

nlohmann::json CompletionLogprobsJson(const std::vector<engine::TokenLogprob>& entries,
                                      const TokenPieceFn& piece, int* text_offset,
                                      bool first_unscored) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (size_t i = 0; i < entries.size(); ++i) {
    const engine::TokenLogprob& e = entries[i];
    tokens.push_back(TokenDisplayString(e.text));
    offsets.push_back(*text_offset);
    *text_offset += CodePoints(e.text);
    if (first_unscored && i == 0) {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(ClampLogprob(e.logprob));
    json alternatives = json::object();
    for (const auto& [id, lp] : e.top) {
      alternatives[TokenDisplayString(piece(id))] = ClampLogprob(lp);
    }
    // The chosen token is always listed, as in OpenAI's and vLLM's output.
    alternatives[TokenDisplayString(e.text)] = ClampLogprob(e.logprob);
    top.push_back(std::move(alternatives));
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

nlohmann::json ChatLogprobsJson(const std::vector<engine::TokenLogprob>& entries,
                                const TokenPieceFn& piece) {
  json content = json::array();
  for (const engine::TokenLogprob& e : entries) {
    json top = json::array();
    for (const auto& [id, lp] : e.top) {
      const std::string text = piece(id);
      top.push_back({{"token", TokenDisplayString(text)},
                     {"logprob", ClampLogprob(lp)},
                     {"bytes", BytesJson(text)}});
    }
    content.push_back({{"token", TokenDisplayString(e.text)},
                       {"logprob", ClampLogprob(e.logprob)},
                       {"bytes", BytesJson(e.text)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

absl::Status ResponseCollector::Add(engine::StreamEvent e) {
  if (e.choice < 0 || e.choice >= static_cast<int>(choices_.size())) {
    return absl::InternalError(
        absl::StrCat("engine event for choice ", e.choice, " of ", choices_.size()));
  }
  if (!e.prompt_logprobs.empty()) prompt_logprobs_ = std::move(e.prompt_logprobs);
  ChoiceOutput& c = choices_[e.choice];
  c.text += e.text;
  for (auto& lp : e.logprobs) c.logprobs.push_back(std::move(lp));
  if (e.finish != engine::FinishReason::kNone) {
    c.finish = e.finish;
    c.completion_tokens = e.completion_tokens;
    c.kv_bytes = e.kv_bytes;
    c.kv_bytes_uncompressed = e.kv_bytes_uncompressed;
    c.cached_tokens = e.cached_tokens;
  }
  if (e.finish == engine::FinishReason::kError) {
    return e.error.ok() ? absl::InternalError("the engine failed the request") : e.error;
  }
  if (e.finish == engine::FinishReason::kAbort) {
    return absl::UnavailableError("the request was aborted: the server is shutting down");
  }
  return absl::OkStatus();
}

bool ResponseCollector::AllFinished() const {
  for (const ChoiceOutput& c : choices_) {
    if (c.finish == engine::FinishReason::kNone) return false;
  }
  return true;
}

int ResponseCollector::completion_tokens() const {
  int sum = 0;
  for (const ChoiceOutput& c : choices_) sum += c.completion_tokens;
  return sum;
}

KvUsage ResponseCollector::kv_usage() const {
  KvUsage kv;
  for (const ChoiceOutput& c : choices_) {
    kv.bytes += c.kv_bytes;
    kv.bytes_uncompressed += c.kv_bytes_uncompressed;
    // The choices share one prompt: its cached part is counted once.
    kv.cached_tokens = std::max(kv.cached_tokens, c.cached_tokens);
  }
  return kv;
}

namespace {

// The echoed prompt as logprob entries: the first token unscored, then the
// engine's prompt log-probabilities (one per later prompt token).
std::vector<engine::TokenLogprob> EchoEntries(const ResponseOptions& o,
                                              const std::vector<engine::TokenLogprob>& prompt_lps,
                                              const TokenPieceFn& piece) {
  std::vector<engine::TokenLogprob> out;
  if (o.prompt.empty()) return out;
  engine::TokenLogprob first;
  first.token = o.prompt[0];
  first.text = piece(first.token);
  out.push_back(std::move(first));
  out.insert(out.end(), prompt_lps.begin(), prompt_lps.end());
  return out;
}

}  // namespace

nlohmann::json CompletionResponseJson(const ResponseMeta& meta, const ResponseCollector& collected,
                                      const ResponseOptions& options, const TokenPieceFn& piece) {
  const KvUsage kv_usage = collected.kv_usage();
  json choices = json::array();
  for (size_t i = 0; i < collected.choices().size(); ++i) {
    const ChoiceOutput& c = collected.choices()[i];
    json lp = nullptr;
    if (options.logprobs) {
      int offset = 0;
      std::vector<engine::TokenLogprob> entries;
      if (options.echo) entries = EchoEntries(options, collected.prompt_logprobs(), piece);
      entries.insert(entries.end(), c.logprobs.begin(), c.logprobs.end());
      lp = CompletionLogprobsJson(entries, piece, &offset, /*first_unscored=*/options.echo);
    }
    choices.push_back({{"index", i},
                       {"text", options.echo ? options.echo_text + c.text : c.text},
                       {"logprobs", std::move(lp)},
                       {"finish_reason", FinishReasonJson(c.finish)}});
  }
  return {{"id", meta.id},
          {"object", "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", std::move(choices)},
          {"usage", UsageJson(options.prompt_tokens, collected.completion_tokens(), &kv_usage)}};
}

nlohmann::json ChatResponseJson(const ResponseMeta& meta, const ResponseCollector& collected,
                                const ResponseOptions& options, const TokenPieceFn& piece) {
  const KvUsage kv_usage = collected.kv_usage();
  json choices = json::array();
  for (size_t i = 0; i < collected.choices().size(); ++i) {
    const ChoiceOutput& c = collected.choices()[i];
    choices.push_back(
        {{"index", i},
         {"message", {{"role", "assistant"}, {"content", c.text}}},
         {"logprobs", options.logprobs ? ChatLogprobsJson(c.logprobs, piece) : json(nullptr)},
         {"finish_reason", FinishReasonJson(c.finish)}});
  }
  return {{"id", meta.id},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", std::move(choices)},
          {"usage", UsageJson(options.prompt_tokens, collected.completion_tokens(), &kv_usage)}};
}

std::string SseEvent(const nlohmann::json& j) {
  return absl::StrCat("data: ", DumpJson(j), "\n\n");
}

StreamFormatter::StreamFormatter(Kind kind, ResponseMeta meta, int n, ResponseOptions options,
                                 TokenPieceFn piece)
    : kind_(kind),
      meta_(std::move(meta)),
      options_(std::move(options)),
      piece_(std::move(piece)),
      started_(n, false),
      text_offset_(n, 0),
      completion_tokens_(n, 0) {}

nlohmann::json StreamFormatter::Chunk(nlohmann::json choice) const {
  json chunk = {{"id", meta_.id},
                {"object", kind_ == Kind::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", meta_.created},
                {"model", meta_.model},
                {"choices", json::array({std::move(choice)})}};
  // With include_usage every chunk carries "usage": null and the last one
  // the totals, as the OpenAI API streams it.
  if (options_.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

nlohmann::json StreamFormatter::ChoiceLogprobs(int choice,
                                               const std::vector<engine::TokenLogprob>& lps,
                                               bool first_unscored) {
  if (!options_.logprobs) return nullptr;
  if (kind_ == Kind::kChat) return ChatLogprobsJson(lps, piece_);
  return CompletionLogprobsJson(lps, piece_, &text_offset_[choice], first_unscored);
}

absl::StatusOr<std::string> StreamFormatter::OnEvent(const engine::StreamEvent& e) {
  if (e.choice < 0 || e.choice >= static_cast<int>(started_.size())) {
    return absl::InternalError(
        absl::StrCat("engine event for choice ", e.choice, " of ", started_.size()));
  }
  if (e.finish == engine::FinishReason::kError) {
    return e.error.ok() ? absl::InternalError("the engine failed the request") : e.error;
  }
  if (e.finish == engine::FinishReason::kAbort) {
    return absl::UnavailableError("the request was aborted: the server is shutting down");
  }
  if (!e.prompt_logprobs.empty()) prompt_logprobs_ = e.prompt_logprobs;
  const int i = e.choice;
  std::string out;
  if (!started_[i]) {
    started_[i] = true;
    if (kind_ == Kind::kChat) {
      out += SseEvent(Chunk({{"index", i},
                             {"delta", {{"role", "assistant"}, {"content", ""}}},
                             {"logprobs", nullptr},
                             {"finish_reason", nullptr}}));
    } else if (options_.echo) {
      json lp = options_.logprobs
                    ? ChoiceLogprobs(i, EchoEntries(options_, prompt_logprobs_, piece_), true)
                    : json(nullptr);
      out += SseEvent(Chunk({{"index", i},
                             {"text", options_.echo_text},
                             {"logprobs", std::move(lp)},
                             {"finish_reason", nullptr}}));
    }
  }
  const bool finished = e.finish != engine::FinishReason::kNone;
  if (finished) {
    completion_tokens_[i] = e.completion_tokens;
    kv_usage_.bytes += e.kv_bytes;
    kv_usage_.bytes_uncompressed += e.kv_bytes_uncompressed;
    kv_usage_.cached_tokens = std::max(kv_usage_.cached_tokens, e.cached_tokens);
  }
  const bool has_logprobs = options_.logprobs && !e.logprobs.empty();
  if (e.text.empty() && !has_logprobs && !finished) return out;
  json lp = has_logprobs ? ChoiceLogprobs(i, e.logprobs, false) : json(nullptr);
  json choice;
  if (kind_ == Kind::kChat) {
    json delta = json::object();
    if (!e.text.empty()) delta["content"] = e.text;
    choice = {{"index", i}, {"delta", std::move(delta)}};
  } else {
    choice = {{"index", i}, {"text", e.text}};
  }
  choice["logprobs"] = std::move(lp);
  choice["finish_reason"] = FinishReasonJson(e.finish);
  out += SseEvent(Chunk(std::move(choice)));
  return out;
}

std::string StreamFormatter::Finish() const {
  std::string out;
  if (options_.include_usage) {
    int completion = 0;
    for (int c : completion_tokens_) completion += c;
    json chunk = {{"id", meta_.id},
                  {"object", kind_ == Kind::kChat ? "chat.completion.chunk" : "text_completion"},
                  {"created", meta_.created},
                  {"model", meta_.model},
                  {"choices", json::array()},
                  {"usage", UsageJson(options_.prompt_tokens, completion, &kv_usage_)}};
    out += SseEvent(chunk);
  }
  out += kSseDone;
  return out;
}

std::string StreamFormatter::ErrorEvent(const absl::Status& status) {
  return SseEvent(OpenAiErrorBody(status));
}

}  // namespace kvserve::server
