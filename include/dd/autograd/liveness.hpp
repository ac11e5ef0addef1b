#pragma once
// The tape outlives whatever recorded on it: a forward whose backward never ran leaves its closures
// on the thread's tape until the next backward or Tape::clear(). A closure that needs its recording
// object (`this`) checks, when replayed, that the object still exists and was not moved from, and
// fails with a message instead of touching freed memory.
#include <memory>

#include "dd/core/error.hpp"

namespace dd {

class Liveness {
 public:
  class Watch {
   public:
    explicit Watch(std::weak_ptr<char> w) : w_(std::move(w)) {}
    // Throws dd::Error naming `who` when the object is gone.
    void require(const char* who) const {
      DD_CHECK(!w_.expired(),
               "{}: a backward pass replayed what a forward recorded on an object destroyed or moved since (run "
               "backward before the model goes, or drop the recording with dd::Tape::current().clear())",
               who);
    }

   private:
    std::weak_ptr<char> w_;
  };

  // A copy or move gets an identity of its own; a moved-from or assigned-to object loses the old
  // one (the closures recorded on it see it gone).
  Liveness() = default;
  Liveness(const Liveness&) noexcept {}
  Liveness(Liveness&& o) noexcept { o.token_.reset(); }
  Liveness& operator=(const Liveness&) noexcept {
    token_.reset();
    return *this;
  }
  Liveness& operator=(Liveness&& o) noexcept {
    token_.reset(), o.token_.reset();
    return *this;
  }

  Watch watch() {
    if (!token_) token_ = std::make_shared<char>();
    return Watch(token_);
  }

 private:
  std::shared_ptr<char> token_;
};

}  // namespace dd
