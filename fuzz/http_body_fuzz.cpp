// Fuzzes the HTTP API's request handling end to end: an in-process http::Server (anonymous
// admin on loopback, retrieval-only agent) over a store whose database is unreachable, driven
// by a keep-alive client. The first byte picks the route; the rest is the JSON body (POST
// /memories, PATCH /memories/{id}, POST /search, POST /ask, the NDJSON import) or the query
// string (GET /memories). Inputs the handlers accept reach the store and get 503 (database
// unreachable); everything else must be a 4xx. Never a 500, never a dropped connection, and
// every error is {"error": {"code", "message"}}.
#include <httplib.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "http/metrics.h"
#include "http/server.h"
#include "offline_store.h"

namespace {

struct Served {
    ka::fuzz::OfflineStore offline;
    ka::http::Metrics metrics;
    ka::agent::Agent agent{*offline.store, nullptr, offline.config, ""};
    ka::http::Server server{offline.config, *offline.store, offline.pool, metrics, &agent};
    int port = 0;
    std::thread thread;

    Served() {
        auto bound = server.bind();
        ka::fuzz::require(bound.has_value(), "cannot bind");
        port = *bound;
        thread = std::thread([this] { server.run(); });
    }
};

std::string query_string(std::string_view raw) {
    std::string out;
    for (unsigned char c : raw) {
        if (std::isalnum(c) || c == '=' || c == '&' || c == '_' || c == '-' || c == '.') {
            out += static_cast<char>(c);
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Served* served = [] {
        ka::fuzz::silence_logs();
        return new Served();
    }();
    static httplib::Client* client = [] {
        auto* c = new httplib::Client("127.0.0.1", served->port);
        c->set_keep_alive(true);
        c->set_tcp_nodelay(true);
        c->set_url_encode(false);
        c->set_connection_timeout(std::chrono::seconds(5));
        c->set_read_timeout(std::chrono::seconds(20));
        return c;
    }();
    if (size == 0) return 0;
    std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    httplib::Result res{nullptr, httplib::Error::Unknown};
    switch (data[0] % 6) {
        case 0:
            res = client->Post("/api/v1/memories", rest, "application/json");
            break;
        case 1:
            res = client->Patch("/api/v1/memories/0190b4a0-0000-7000-8000-000000000000", rest,
                                "application/json");
            break;
        case 2:
            res = client->Post("/api/v1/search", rest, "application/json");
            break;
        case 3:
            res = client->Post("/api/v1/ask", rest, "application/json");
            break;
        case 4:
            res = client->Get("/api/v1/memories?" + query_string(rest));
            break;
        default:
            res = client->Post("/api/v1/memories:import", rest, "application/x-ndjson");
            break;
    }
    static std::string previous;  // what the connection carried before, for the report
    ka::fuzz::require(
        static_cast<bool>(res), "no HTTP response",
        res ? ""
            : fmt::format("{} (this request: route {} {} bytes; before it: {})",
                          httplib::to_string(res.error()), data[0] % 6, size, previous));
    previous = fmt::format("route {}, {} bytes, HTTP {}, Connection: {}", data[0] % 6, size,
                           res->status, res->get_header_value("Connection"));
    int status = res->status;
    ka::fuzz::require(status < 500 || status == 503, "server error",
                      fmt::format("{} {}", status, res->body));
    if (status >= 400) {
        auto j = nlohmann::json::parse(res->body, nullptr, false);
        ka::fuzz::require(j.is_object() && j.contains("error") && j["error"].is_object() &&
                              j["error"]["message"].is_string() && j["error"]["code"].is_string(),
                          "error body is not {\"error\": {code, message}}", res->body);
    }
    return 0;
}
