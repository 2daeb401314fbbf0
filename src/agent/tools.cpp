#include "agent/tools.h"

#include <algorithm>

#include <fmt/format.h>

namespace ka::agent {
namespace {

using nlohmann::json;

constexpr int kMaxToolK = 20;

std::unexpected<Error> bad(std::string message) {
    return fail(ErrorCode::invalid_argument, std::move(message));
}

Result<std::vector<std::string>> tags_of(const json& args) {
    std::vector<std::string> tags;
    if (!args.contains("tags") || args["tags"].is_null()) return tags;
    if (!args["tags"].is_array()) return bad("tags must be an array of strings");
    for (const auto& t : args["tags"]) {
        if (!t.is_string()) return bad("tags must be an array of strings");
        tags.push_back(t.get<std::string>());
    }
    return tags;
}

Status only(const json& args, std::initializer_list<std::string_view> allowed) {
    for (const auto& [key, value] : args.items()) {
        if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
            return bad(fmt::format("unknown argument '{}'", key));
    }
    return {};
}

Result<ToolOutcome> search_memory(store::Store& store, const Caller& caller, const json& args) {
    if (auto ok = only(args, {"query", "k", "tags"}); !ok) return std::unexpected(ok.error());
    if (!args.contains("query") || !args["query"].is_string())
        return bad("query is required and must be a string");
    store::SearchRequest r;
    r.query = args["query"].get<std::string>();
    r.k = 5;
    if (args.contains("k") && !args["k"].is_null()) {
        if (!args["k"].is_number_integer()) return bad("k must be an integer");
        auto k = args["k"].get<std::int64_t>();
        if (k < 1 || k > kMaxToolK)
            return bad(fmt::format("k must be between 1 and {}", kMaxToolK));
        r.k = static_cast<int>(k);
    }
    auto tags = tags_of(args);
    if (!tags) return std::unexpected(tags.error());
    r.filters.tags = std::move(*tags);
    r.filters.scopes = caller.scopes;
    std::string degraded;
    auto hits = store.search(r, &degraded);
    if (!hits) return std::unexpected(hits.error());
    ToolOutcome out;
    out.result = json::array();
    for (const auto& h : *hits) {
        out.result.push_back({{"id", h.entry.id},
                              {"content", h.entry.content},
                              {"tags", h.entry.tags},
                              {"scope", h.entry.scope},
                              {"created_at", h.entry.created_at},
                              {"similarity", h.similarity ? json(*h.similarity) : json(nullptr)}});
        out.found.push_back(h.entry);
    }
    out.result = {{"results", out.result}};
    // Tells the model why similarities are missing and recall may be lower.
    if (!degraded.empty()) out.result["degraded"] = degraded;
    return out;
}

Result<ToolOutcome> save_to_memory(store::Store& store, const Caller& caller, const json& args) {
    if (!caller.may_write)
        return fail(ErrorCode::forbidden,
                    "saving is not allowed for this caller (read-only access)");
    if (auto ok = only(args, {"content", "tags"}); !ok) return std::unexpected(ok.error());
    if (!args.contains("content") || !args["content"].is_string())
        return bad("content is required and must be a string");
    store::NewEntry e;
    e.content = args["content"].get<std::string>();
    auto tags = tags_of(args);
    if (!tags) return std::unexpected(tags.error());
    e.tags = std::move(*tags);
    e.scope = !caller.default_scope.empty() ? caller.default_scope
              : caller.scopes.empty()       ? std::string()
                                            : caller.scopes.front();
    e.source = "agent";
    auto added = store.add(std::move(e));
    if (!added) return std::unexpected(added.error());
    ToolOutcome out;
    out.result = {{"id", added->entry.id},
                  {"saved", added->created},
                  {"note", added->created ? "saved" : "already known; nothing new was saved"}};
    out.saved = added->entry;
    return out;
}

}  // namespace

const std::vector<llm::ToolSpec>& memory_tools() {
    static const std::vector<llm::ToolSpec> tools = {
        {"search_memory",
         "Search the team's saved knowledge by meaning. Use it before answering questions about "
         "the team's systems, processes, decisions or people. Returns entries with ids, content, "
         "tags and dates.",
         {{"type", "object"},
          {"properties",
           {{"query", {{"type", "string"}, {"description", "what to look for, in plain words"}}},
            {"k",
             {{"type", "integer"},
              {"minimum", 1},
              {"maximum", kMaxToolK},
              {"description", "how many results (default 5)"}}},
            {"tags",
             {{"type", "array"},
              {"items", {{"type", "string"}}},
              {"description", "only entries carrying all these tags"}}}}},
          {"required", {"query"}}}},
        {"save_to_memory",
         "Save a fact the user taught you so the team can find it later. Save self-contained "
         "statements; write relative dates (\"next Tuesday\") as real dates.",
         {{"type", "object"},
          {"properties",
           {{"content", {{"type", "string"}, {"description", "the fact, self-contained"}}},
            {"tags",
             {{"type", "array"},
              {"items", {{"type", "string"}}},
              {"description", "short topic tags, e.g. deploy, oncall"}}}}},
          {"required", {"content"}}}},
    };
    return tools;
}

Result<ToolOutcome> run_tool(store::Store& store, const Caller& caller, const std::string& name,
                             const json& arguments) {
    if (!arguments.is_object()) return bad("arguments must be a JSON object");
    if (name == "search_memory") return search_memory(store, caller, arguments);
    if (name == "save_to_memory") return save_to_memory(store, caller, arguments);
    return bad(fmt::format("unknown tool '{}' (available: search_memory, save_to_memory)", name));
}

}  // namespace ka::agent
