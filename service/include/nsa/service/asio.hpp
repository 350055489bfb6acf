#pragma once
// The one place the service includes Boost.Asio. Boost 1.74's awaitable.hpp uses std::exchange
// without including <utility>, which libstdc++ 12 no longer pulls in transitively; including it
// first keeps every translation unit of the service compiling.

#include <utility>

#include <boost/asio.hpp>

namespace nsa::service {
namespace asio = boost::asio;
}  // namespace nsa::service
