// The two error kinds the core raises. The bindings map them to Python:
//   std::invalid_argument -> ValueError (bad input from the caller, names the field)
//   CoreError             -> pagedllm._C.core.CoreError (a broken contract, i.e. a bug)
// "No room" is never an error: it is an empty std::optional.
#pragma once

#include <stdexcept>
#include <string>

namespace pagedllm::core {

class CoreError : public std::logic_error {
 public:
  explicit CoreError(const std::string& what) : std::logic_error(what) {}
};

}  // namespace pagedllm::core
