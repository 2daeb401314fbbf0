#include "support/served.h"

#include <httplib.h>

#include <chrono>
#include <stdexcept>

#include "db/startup.h"

namespace ka::test {

using namespace std::chrono_literals;

Served::Served(const std::string& url, const std::string& yaml) {
    auto loaded =
        config::load_from_string(yaml, [&](const std::string& name) -> std::optional<std::string> {
            if (name == "POSTGRES_URL") return url;
            return std::nullopt;
        });
    if (!loaded) throw std::runtime_error("config: " + loaded.error().message);
    config_ = std::move(*loaded);
    auto conn = db::connect(config_);
    if (!conn) throw std::runtime_error("connect: " + conn.error().message);
    if (auto ok = db::prepare_schema(*conn, config_, config_.migrations.auto_apply); !ok)
        throw std::runtime_error("schema: " + ok.error().message);
    pool_ = std::make_unique<db::Pool>(conn->target(), config_.postgres.pool_size,
                                       config_.postgres.connect_timeout);
    auto inner = embed::make_embedder(config_);
    if (!inner) throw std::runtime_error("embedder: " + inner.error().message);
    embedder_ = std::make_unique<http::MeasuredEmbedder>(std::move(*inner), metrics_);
    store_ = std::make_unique<store::Store>(*pool_, *embedder_, config_);
    if (auto ok = store_->prepare(); !ok)
        throw std::runtime_error("prepare: " + ok.error().message);
    auto model = llm::make_chat_model(config_);
    if (!model) throw std::runtime_error("llm: " + model.error().message);
    model_ = std::move(*model);
    auto prompt = agent::base_prompt(config_);
    if (!prompt) throw std::runtime_error("prompt: " + prompt.error().message);
    agent_ = std::make_unique<agent::Agent>(*store_, model_.get(), config_, std::move(*prompt));
    server_ = std::make_unique<http::Server>(config_, *store_, *pool_, metrics_, agent_.get());
    auto port = server_->bind();
    if (!port) throw std::runtime_error("bind: " + port.error().message);
    port_ = *port;
    thread_ = std::thread([this] { server_->run(); });
    // stop() before the accept loop runs would be lost: wait until it answers.
    httplib::Client probe("127.0.0.1", port_);
    probe.set_connection_timeout(5s);
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (true) {
        auto res = probe.Get("/health");
        if (res && res->status == 200) break;
        if (std::chrono::steady_clock::now() > deadline) {
            server_->stop();
            thread_.join();
            throw std::runtime_error("the server did not come up");
        }
        std::this_thread::sleep_for(5ms);
    }
}

Served::~Served() {
    server_->stop();
    thread_.join();
}

}  // namespace ka::test
