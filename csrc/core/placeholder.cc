// Replaced by the real core sources.
namespace pagedllm::core { int placeholder() { return 0; } }
