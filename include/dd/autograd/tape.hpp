#pragma once
// The tape: a linear list of backward closures recorded in forward (program) order and replayed
// in reverse, so no graph sort is needed. Each closure holds what its backward needs; replaying
// releases it, which frees activations as the backward pass goes.
#include <functional>
#include <vector>

namespace dd {

class Tape {
 public:
  using Entry = std::function<void()>;

  void record(Entry e) { entries_.push_back(std::move(e)); }
  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

  // Runs every entry newest first, then forgets them all (also when one throws: the tape is
  // then half replayed, and nothing of it can run again).
  void backward() {
    struct Forget {
      std::vector<Entry>& entries;
      ~Forget() { entries.clear(); }
    } forget{entries_};
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      Entry e = std::move(*it);
      *it = nullptr;
      e();
    }
  }
  // Drops what was recorded without running it (e.g. after a validation pass with grad on).
  void clear() { entries_.clear(); }

  // The tape ops record to on this thread: the innermost TapeScope's, else a per-thread default.
  static Tape& current() { return *current_ref(); }

 private:
  friend class TapeScope;
  static Tape*& current_ref() {
    thread_local Tape default_tape;
    thread_local Tape* current = &default_tape;
    return current;
  }
  std::vector<Entry> entries_;
};

// Makes `tape` the current tape of this thread for the scope's lifetime.
class TapeScope {
 public:
  explicit TapeScope(Tape& tape) : previous_(Tape::current_ref()) { Tape::current_ref() = &tape; }
  ~TapeScope() { Tape::current_ref() = previous_; }
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape* previous_;
};

// Whether ops record on this thread. NoGrad turns recording off for a scope (inference).
class GradMode {
 public:
  static bool enabled() { return flag(); }
  static void set(bool on) { flag() = on; }

 private:
  static bool& flag() {
    thread_local bool on = true;
    return on;
  }
};

class NoGrad {
 public:
  NoGrad() : previous_(GradMode::enabled()) { GradMode::set(false); }
  ~NoGrad() { GradMode::set(previous_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

}  // namespace dd
