#include "mcp/server.h"

#include <algorithm>
#include <exception>

#include <fmt/format.h>

#include "log/log.h"

namespace ka::mcp {
namespace {

using nlohmann::json;

// Revisions whose tool results may carry structuredContent (added in 2025-06-18).
constexpr std::string_view kFirstStructuredVersion = "2025-06-18";

std::string dump(const json& j) {
    // Invalid UTF-8 (which the store never returns) is replaced rather than thrown on; dump()
    // escapes control characters, so the line has no embedded newline.
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json response(const json& id, json result) {
    return {{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}

json error_response(const json& id, int code, std::string message) {
    return {{"jsonrpc", "2.0"},
            {"id", id},
            {"error", {{"code", code}, {"message", std::move(message)}}}};
}

bool valid_id(const json& id) {
    // MCP: a string or an integer, never null.
    return id.is_string() || id.is_number_integer();
}

json tool_json(const agent::ToolSpec& tool) {
    json t = {
        {"name", tool.name}, {"description", tool.description}, {"inputSchema", tool.input_schema}};
    if (tool.name == "search_memory") {
        t["title"] = "Search memory";
        t["annotations"] = {
            {"title", "Search memory"}, {"readOnlyHint", true}, {"openWorldHint", false}};
    } else if (tool.name == "save_to_memory") {
        t["title"] = "Save to memory";
        // Saving the same text twice returns the first entry: idempotent, never destructive.
        t["annotations"] = {{"title", "Save to memory"},
                            {"readOnlyHint", false},
                            {"destructiveHint", false},
                            {"idempotentHint", true},
                            {"openWorldHint", false}};
    }
    return t;
}

const agent::ToolSpec* find_tool(const std::string& name) {
    const auto& tools = agent::memory_tools();
    auto it = std::find_if(tools.begin(), tools.end(),
                           [&](const agent::ToolSpec& t) { return t.name == name; });
    return it == tools.end() ? nullptr : &*it;
}

}  // namespace

const std::vector<std::string>& supported_protocol_versions() {
    static const std::vector<std::string> versions = {"2025-11-25", "2025-06-18", "2025-03-26",
                                                      "2024-11-05"};
    return versions;
}

Server::Server(store::Store& store, agent::Caller caller, std::size_t max_line_bytes)
    : store_(store), caller_(std::move(caller)), max_line_bytes_(max_line_bytes) {}

std::optional<std::string> Server::handle_line(std::string_view line) {
    if (line.size() > max_line_bytes_) {
        return dump(error_response(
            nullptr, kInvalidRequest,
            fmt::format("message too large: a message may be at most {} bytes", max_line_bytes_)));
    }
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) return std::nullopt;
    try {
        bool too_deep = false;
        json message = json::parse(
            line,
            [&](int depth, json::parse_event_t, json&) {
                if (depth > kMaxJsonDepth) too_deep = true;
                return !too_deep;
            },
            false);
        if (too_deep) {
            return dump(error_response(
                nullptr, kInvalidRequest,
                fmt::format("message is nested deeper than {} levels", kMaxJsonDepth)));
        }
        if (message.is_discarded()) {
            return dump(error_response(nullptr, kParseError,
                                       "parse error: a message must be one line of valid JSON "
                                       "(UTF-8)"));
        }
        auto reply = handle(message);
        if (!reply) return std::nullopt;
        return dump(*reply);
    } catch (const std::exception& e) {
        // Never expected; the session survives it.
        log::error("MCP message handling failed", {{"error", e.what()}});
        return dump(error_response(nullptr, kInternalError, "internal error"));
    }
}

std::optional<json> Server::handle(const json& message) {
    if (message.is_array()) {
        return error_response(nullptr, kInvalidRequest,
                              "batches are not supported: send one JSON-RPC message per line");
    }
    if (!message.is_object()) {
        return error_response(nullptr, kInvalidRequest, "a message must be a JSON object");
    }
    const bool has_id = message.contains("id");
    if (has_id && !valid_id(message["id"])) {
        return error_response(nullptr, kInvalidRequest, "id must be a string or an integer");
    }
    const json id = has_id ? message["id"] : json(nullptr);
    if (!message.contains("method")) {
        // A response to a request of ours: we send none, so there is nothing to match it to.
        if (has_id && (message.contains("result") || message.contains("error")))
            return std::nullopt;
        return error_response(id, kInvalidRequest, "method is required");
    }
    if (!message.contains("jsonrpc") || message["jsonrpc"] != "2.0") {
        return error_response(id, kInvalidRequest, "jsonrpc must be \"2.0\"");
    }
    if (!message["method"].is_string()) {
        return error_response(id, kInvalidRequest, "method must be a string");
    }
    const std::string method = message["method"].get<std::string>();
    static const json kNoParams;
    const json& params = message.contains("params") ? message["params"] : kNoParams;

    if (!has_id) {
        // Notifications get no reply, whether known, unknown or malformed.
        if (method == "notifications/initialized") {
            log::debug("MCP client initialized", {{"protocol_version", protocol_version_}});
        }
        return std::nullopt;
    }
    if (!params.is_null() && !params.is_object()) {
        return error_response(id, kInvalidParams, "params must be an object");
    }

    if (method == "ping") return response(id, json::object());
    if (method == "initialize") return initialize(id, params);
    if (method != "tools/list" && method != "tools/call") {
        return error_response(id, kMethodNotFound, fmt::format("method not found: {}", method));
    }
    if (!initialized_) {
        return error_response(id, kInvalidRequest,
                              "the session is not initialized: send initialize first");
    }
    if (method == "tools/list") return list_tools(id, params);
    return call_tool(id, params);
}

json Server::initialize(const json& id, const json& params) {
    if (initialized_) {
        return error_response(id, kInvalidRequest, "the session is already initialized");
    }
    if (!params.is_object() || !params.contains("protocolVersion") ||
        !params["protocolVersion"].is_string()) {
        return error_response(id, kInvalidParams,
                              "initialize needs params.protocolVersion (a string)");
    }
    if (params.contains("capabilities") && !params["capabilities"].is_object()) {
        return error_response(id, kInvalidParams, "capabilities must be an object");
    }
    if (params.contains("clientInfo") && !params["clientInfo"].is_object()) {
        return error_response(id, kInvalidParams, "clientInfo must be an object");
    }
    const auto requested = params["protocolVersion"].get<std::string>();
    const auto& versions = supported_protocol_versions();
    protocol_version_ = std::find(versions.begin(), versions.end(), requested) != versions.end()
                            ? requested
                            : versions.front();
    initialized_ = true;

    std::string client = "unknown";
    if (params.contains("clientInfo") && params["clientInfo"].contains("name") &&
        params["clientInfo"]["name"].is_string()) {
        client = params["clientInfo"]["name"].get<std::string>();
    }
    log::info("MCP session started", {{"client", client},
                                      {"requested_version", requested},
                                      {"protocol_version", protocol_version_}});

    std::string instructions =
        "A team knowledge base. Call search_memory before answering questions about the team's "
        "systems, processes, decisions or people, and cite what you found.";
    if (caller_.may_write) {
        instructions +=
            " When the user teaches you a durable fact, save it with save_to_memory as a "
            "self-contained statement.";
    }
    return response(
        id, {{"protocolVersion", protocol_version_},
             {"capabilities", {{"tools", {{"listChanged", false}}}}},
             {"serverInfo",
              {{"name", "knowledge-agent"}, {"title", "Knowledge Agent"}, {"version", KA_VERSION}}},
             {"instructions", instructions}});
}

json Server::list_tools(const json& id, const json& params) const {
    // One page holds every tool, so no cursor was ever handed out.
    if (params.is_object() && params.contains("cursor") && !params["cursor"].is_null()) {
        return error_response(id, kInvalidParams, "invalid cursor: tools/list has one page");
    }
    json tools = json::array();
    for (const auto& tool : agent::memory_tools()) {
        if (tool.name == "save_to_memory" && !caller_.may_write) continue;
        tools.push_back(tool_json(tool));
    }
    return response(id, {{"tools", std::move(tools)}});
}

json Server::call_tool(const json& id, const json& params) {
    if (!params.is_object() || !params.contains("name") || !params["name"].is_string()) {
        return error_response(id, kInvalidParams, "tools/call needs params.name (a string)");
    }
    const auto name = params["name"].get<std::string>();
    json arguments = json::object();
    if (params.contains("arguments") && !params["arguments"].is_null()) {
        if (!params["arguments"].is_object()) {
            return error_response(id, kInvalidParams, "arguments must be an object");
        }
        arguments = params["arguments"];
    }
    if (!find_tool(name)) {
        return error_response(
            id, kInvalidParams,
            fmt::format("unknown tool '{}' (available: search_memory{})", name.substr(0, 200),
                        caller_.may_write ? ", save_to_memory" : ""));
    }

    auto outcome = agent::run_tool(store_, caller_, name, arguments);
    if (!outcome) {
        const Error& e = outcome.error();
        // Bad arguments and refused saves are the model's to fix; anything else is worth a log.
        if (e.code != ErrorCode::invalid_argument && e.code != ErrorCode::forbidden) {
            log::warn(
                "MCP tool call failed",
                {{"tool", name}, {"code", std::string(to_string(e.code))}, {"error", e.message}});
        }
        std::string text = e.message;
        if (!e.hint.empty()) text += " (hint: " + e.hint + ")";
        return response(id, {{"content", json::array({{{"type", "text"}, {"text", text}}})},
                             {"isError", true}});
    }
    log::debug("MCP tool call", {{"tool", name}});
    json result = {{"content", json::array({{{"type", "text"}, {"text", dump(outcome->result)}}})},
                   {"isError", false}};
    if (protocol_version_ >= kFirstStructuredVersion && outcome->result.is_object()) {
        result["structuredContent"] = outcome->result;
    }
    return response(id, std::move(result));
}

namespace {

// Reads one line into `line`, keeping at most max_bytes + 1 bytes of it (the rest is discarded,
// so an endless line costs no memory). False at end of input with nothing read.
bool read_line(std::streambuf& in, std::string& line, std::size_t max_bytes) {
    line.clear();
    bool any = false;
    for (;;) {
        // Byte by byte: on a pipe, sbumpc returns as soon as a byte is there, where a bulk read
        // could wait for more input than the client has sent.
        int c = in.sbumpc();
        if (c == std::char_traits<char>::eof()) return any;
        any = true;
        if (c == '\n') return true;
        if (line.size() <= max_bytes) line.push_back(static_cast<char>(c));
    }
}

}  // namespace

int serve(std::istream& in, std::ostream& out, store::Store& store, const agent::Caller& caller,
          std::size_t max_line_bytes) {
    Server server(store, caller, max_line_bytes);
    std::streambuf* buf = in.rdbuf();
    if (!buf) return 0;
    std::string line;
    while (read_line(*buf, line, max_line_bytes)) {
        auto reply = server.handle_line(line);
        if (!reply) continue;
        out << *reply << '\n';
        out.flush();
        if (!out) {
            log::error("Cannot write to the MCP client: its end of the connection is closed");
            return 1;
        }
    }
    return 0;
}

}  // namespace ka::mcp
