// Fuzzes the MCP JSON-RPC reader: the input is a session, one message per line, through
// mcp::Server::handle_line over a store whose database is unreachable (tool calls that pass
// validation end in an `unavailable` tool error). Every reply must be one line of valid JSON,
// and no message may reach the catch-all that answers -32603 (an unexpected exception).
// The first byte picks the caller: all scopes or one, read-only or read-write.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "mcp/server.h"
#include "offline_store.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static ka::fuzz::OfflineStore* offline = [] {
        ka::fuzz::silence_logs();
        return new ka::fuzz::OfflineStore();
    }();
    if (size == 0) return 0;
    ka::agent::Caller caller;
    if (data[0] & 1) caller.scopes = {"team-a"};
    caller.may_write = (data[0] & 2) != 0;
    std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
    // Small line limit, so the too-long path is reachable with small inputs.
    ka::mcp::Server server(*offline->store, caller, 2048);
    while (!input.empty()) {
        std::size_t end = input.find('\n');
        std::string_view line = input.substr(0, end);
        input = end == std::string_view::npos ? std::string_view() : input.substr(end + 1);
        auto reply = server.handle_line(line);
        if (!reply) continue;
        ka::fuzz::require(reply->find('\n') == std::string::npos, "reply spans lines", *reply);
        auto j = nlohmann::json::parse(*reply, nullptr, false);
        ka::fuzz::require(j.is_object() && j.value("jsonrpc", "") == "2.0",
                          "reply is not a JSON-RPC object", *reply);
        ka::fuzz::require(j.contains("result") != j.contains("error"),
                          "reply needs exactly one of result and error", *reply);
        if (j.contains("error")) {
            ka::fuzz::require(j["error"].is_object() && j["error"]["message"].is_string(),
                              "error without a message", *reply);
            ka::fuzz::require(j["error"]["code"] != ka::mcp::kInternalError,
                              "a message raised an unexpected exception", *reply);
        }
    }
    return 0;
}
