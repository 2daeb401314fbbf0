// `knowledge-agent mcp`: a Model Context Protocol server exposing the memory tools
// (search_memory, save_to_memory) to an MCP client over newline-delimited JSON-RPC 2.0.
// The transport is one stream pair (stdin/stdout in production, stringstreams or pipes in tests);
// this file knows nothing about file descriptors or logging destinations.
#pragma once

#include <cstddef>
#include <istream>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/tools.h"
#include "store/store.h"

namespace ka::mcp {

// A longer line is answered with an Invalid Request error and skipped; the server keeps going.
inline constexpr std::size_t kMaxLineBytes = 4 * 1024 * 1024;

// Deeper JSON is refused with Invalid Request (no tool argument needs more than a few levels).
inline constexpr int kMaxJsonDepth = 64;

// JSON-RPC 2.0 error codes.
inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternalError = -32603;

// Protocol revisions the server speaks, newest first. A client asking for another one is
// answered with the newest.
const std::vector<std::string>& supported_protocol_versions();

// One MCP session: the lifecycle state (initialize, then operation) and the tool dispatch.
// Not thread-safe; one per connection.
class Server {
  public:
    // `caller` decides what the client may do: its scopes (empty: all, saves go to
    // store.default_scope) and whether save_to_memory is offered (may_write).
    Server(store::Store& store, agent::Caller caller, std::size_t max_line_bytes = kMaxLineBytes);

    // Maps one incoming line (without its newline) to the response line to send, if any
    // (notifications, responses and blank lines get none). Never throws; the result is one line
    // of JSON with no embedded newline.
    std::optional<std::string> handle_line(std::string_view line);

    // The same for an already parsed message.
    std::optional<nlohmann::json> handle(const nlohmann::json& message);

    bool initialized() const { return initialized_; }
    // The negotiated revision (empty before initialize).
    const std::string& protocol_version() const { return protocol_version_; }

  private:
    nlohmann::json initialize(const nlohmann::json& id, const nlohmann::json& params);
    nlohmann::json list_tools(const nlohmann::json& id, const nlohmann::json& params) const;
    nlohmann::json call_tool(const nlohmann::json& id, const nlohmann::json& params);

    store::Store& store_;
    agent::Caller caller_;
    std::size_t max_line_bytes_;
    bool initialized_ = false;  // initialize answered
    std::string protocol_version_;
};

// Serves `in` until end of input, answering on `out` (flushed after every message). Returns 0 at
// end of input, 1 when `out` fails (the client went away).
int serve(std::istream& in, std::ostream& out, store::Store& store, const agent::Caller& caller,
          std::size_t max_line_bytes = kMaxLineBytes);

}  // namespace ka::mcp
