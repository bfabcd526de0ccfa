// kvserve hash-key: reads one API key from standard input and prints the
// "sha256:<hex>" form that the tenants file stores, so that raw keys never
// have to be written into it. From a terminal it asks for the key without
// echoing it.
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include "config/tenants.h"
#include "server/cli_args.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace kvserve::server {
namespace {

constexpr char kSummary[] =
    "Prints the hash of an API key for the tenants file (\"api_keys\": [\"sha256:...\"]).\n"
    "The key is read from standard input (one line; a final newline is ignored), e.g.\n"
    "  printf %s \"$KEY\" | kvserve hash-key\n"
    "From a terminal it is asked for without being shown. Keys must be printable ASCII\n"
    "without spaces; clients send them as 'Authorization: Bearer KEY'. To make a random\n"
    "key: openssl rand -hex 32";

// Reads the key from a terminal with echo off, restoring the terminal after.
std::string ReadKeyFromTerminal() {
  std::fputs("API key: ", stderr);
  std::fflush(stderr);
  termios saved{};
  const bool have_terminal = tcgetattr(STDIN_FILENO, &saved) == 0;
  if (have_terminal) {
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  std::string line;
  std::getline(std::cin, line);
  if (have_terminal) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
  std::fputs("\n", stderr);
  return line;
}

}  // namespace

int RunHashKey(const std::vector<std::string>& args) {
  CliArgs cli("hash-key", kSummary);
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;

  std::string key;
  if (isatty(STDIN_FILENO)) {
    key = ReadKeyFromTerminal();
  } else {
    key.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    if (!key.empty() && key.back() == '\n') key.pop_back();
    if (!key.empty() && key.back() == '\r') key.pop_back();
  }
  if (absl::Status s = config::ValidateApiKey(key); !s.ok()) {
    std::fprintf(stderr, "kvserve hash-key: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  std::printf("%s\n", config::FormatKeyHash(config::HashApiKey(key)).c_str());
  return 0;
}

}  // namespace kvserve::server
