// fn.vigsp.superpixel_graph: SLIC (or grid) superpixels and their graph, per sample, on DALI's
// CPU thread pool. A thin wrapper: all computation lives in the shared core (csrc/).
#pragma once

#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "vigsp/superpixel.hpp"

namespace vigsp_dali {

// The schema's arguments, read and checked once for both backends (CPU here, GPU in the .cu).
struct OpArgs {
  bool grid = false;  // method == "grid"
  vigsp::SlicParams params;
};
OpArgs read_op_args(const ::dali::OpSpec &spec);

// Stateless (no RNG, no position), so pipelines with enable_checkpointing=True can use it.
class SuperpixelGraphCPU : public ::dali::StatelessOperator<::dali::CPUBackend> {
 public:
  explicit SuperpixelGraphCPU(const ::dali::OpSpec &spec);

 protected:
  // Output sizes depend on the data (number of segments and edges), so RunImpl sizes them.
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws) override {
    return false;
  }
  void RunImpl(::dali::Workspace &ws) override;

 private:
  bool grid_mode_ = false;
  vigsp::SlicParams params_;
  std::vector<vigsp::Workspace> workspaces_;  // one per pool thread
  std::vector<vigsp::SuperpixelGraph> graphs_;
  std::vector<int> num_labels_;
};

}  // namespace vigsp_dali
