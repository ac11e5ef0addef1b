// ddunet: train, evaluate, segment and describe DDU-Nets from the command line.
//   ddunet train   --images DIR --masks DIR --colors binary --grid 2x2 --out run/
//   ddunet eval    --checkpoint run/best.safetensors --images DIR --masks DIR --colors binary
//   ddunet predict --checkpoint run/best.safetensors --input big.png --output classes.png --overlay overlay.png
//   ddunet summary --depth 4 --base 16 --channels 3 --classes 3 --F 64 --grid 2x2 --size 1024x1024
// Run `ddunet SUBCOMMAND --help` for every flag.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include <dd/ddunet.hpp>
#include <dd/io/png_stream.hpp>
#include <dd/io/region_reader.hpp>
#include <dd/models/summary.hpp>
#if DD_WITH_MPI
#include <dd/backend/mpi/distribution.hpp>
#include <dd/backend/mpi/environment.hpp>
#endif

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- MPI
// Under mpirun (a DD_MPI build) every rank runs the same command: the model's subimages are spread
// over the ranks, each rank reads only its own subimages of a predicted image, and rank 0 alone
// prints, logs and writes files.
struct Ranks {
#if DD_WITH_MPI
  std::optional<dd::mpi::Environment> env;
  std::optional<dd::mpi::Communicator> world;
  std::shared_ptr<dd::mpi::MpiDistribution> dist;
#endif
  int rank = 0, size = 1;
  bool root() const { return rank == 0; }
  // Spreads a model over the ranks (nothing when there is one).
  void place(dd::DDUNet& model) const {
#if DD_WITH_MPI
    if (dist) model.distribute(dist);
#else
    (void)model;
#endif
  }
};
Ranks ranks;

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

void start_ranks(int& argc, char**& argv) {
#if DD_WITH_MPI
  if (!launched_by_mpirun()) return;
  ranks.env.emplace(argc, argv);
  ranks.world.emplace(dd::mpi::Communicator::world());
  ranks.rank = ranks.world->rank();
  ranks.size = ranks.world->size();
  if (ranks.size > 1) ranks.dist = std::make_shared<dd::mpi::MpiDistribution>(*ranks.world);
  if (!ranks.root() && !std::freopen("/dev/null", "w", stdout)) dd::fail("rank {}: cannot silence stdout", ranks.rank);
#else
  (void)argc, (void)argv;
  if (launched_by_mpirun())
    std::fprintf(stderr, "ddunet: warning: started by mpirun, but this build has no MPI backend (DD_MPI=OFF): every "
                         "rank runs the whole job alone\n");
#endif
}

dd::GridSpec parse_grid(const std::string& s) {
  long r = 0, c = 0;
  char x = 0, extra = 0;
  DD_CHECK(std::sscanf(s.c_str(), "%ld%c%ld%c", &r, &x, &c, &extra) == 3 && (x == 'x' || x == 'X') && r > 0 && c > 0,
           "--grid {}: expected ROWSxCOLS with positive numbers, e.g. 2x2", s);
  return {r, c};
}
std::pair<std::int64_t, std::int64_t> parse_size(const std::string& s) {
  long h = 0, w = 0;
  char x = 0, extra = 0;
  const int n = std::sscanf(s.c_str(), "%ld%c%ld%c", &h, &x, &w, &extra);
  if (n == 1) return {h, h};
  DD_CHECK(n == 3 && (x == 'x' || x == 'X') && h > 0 && w > 0, "--size {}: expected HxW or N, e.g. 1024x1024", s);
  return {h, w};
}
std::optional<dd::io::ColorTable> parse_colors(const std::string& s) {
  if (s.empty() || s == "index") return std::nullopt;
  if (s == "binary") return dd::io::ColorTable::binary();
  if (s == "deepglobe") return dd::io::ColorTable::deepglobe();
  return dd::io::ColorTable::parse(s);
}
// A distinct colour per class for overlays when no table is given.
dd::io::ColorTable palette(int classes) {
  static const std::array<std::uint8_t, 3> base[] = {{0, 0, 0},   {255, 0, 0},   {0, 255, 0},   {0, 0, 255},
                                                     {255, 255, 0}, {255, 0, 255}, {0, 255, 255}, {255, 128, 0}};
  dd::io::ColorTable t;
  for (int c = 0; c < classes; ++c) {
    t.colors.push_back(base[c % 8]);
    t.names.push_back("class " + std::to_string(c));
  }
  return t;
}

std::string bar(std::int64_t done, std::int64_t total, int width = 24) {
  const auto fill = static_cast<int>(width * done / std::max<std::int64_t>(total, 1));
  return std::string(std::size_t(fill), '#') + std::string(std::size_t(width - fill), '.');
}

// ---------------------------------------------------------------- data
struct DataOptions {
  std::string images, masks, colors;
  int holdout = 0, channels = 0, classes = 0;
  std::int64_t k = 4, circles_train = 4000, circles_val = 500;
};

struct Data {
  bool circles = true;
  dd::LabeledImages train, val;      // folder data
  dd::SegmentationSet circles_train, circles_val;
  int channels = 1, classes = 3;
};

Data load_data(const DataOptions& o, std::uint64_t seed, bool need_train) {
  Data d;
  if (o.images.empty() && o.masks.empty()) {
    dd::CirclesOptions co;
    co.subimages = o.k;
    if (need_train) d.circles_train = dd::make_circles(o.circles_train, seed * 3, co);
    d.circles_val = dd::make_circles(o.circles_val, seed * 3 + 1, co);
    return d;
  }
  DD_CHECK(!o.images.empty() && !o.masks.empty(), "--images and --masks go together");
  d.circles = false;
  const auto table = parse_colors(o.colors);
  d.classes = table ? static_cast<int>(table->colors.size()) : o.classes;
  DD_CHECK(d.classes >= 2, "masks hold class indices: say how many classes with --classes (or give --colors)");
  const auto pairs = dd::list_pairs(o.images, o.masks);
  DD_CHECK(o.holdout >= 0 && (!need_train || o.holdout < static_cast<int>(pairs.size())),
           "--holdout {}: the folder has {} images and at least one must be left for training", o.holdout, pairs.size());
  const auto split = pairs.end() - o.holdout;
  if (need_train) d.train = dd::load_pairs({pairs.begin(), split}, o.channels, table ? &*table : nullptr, d.classes);
  d.val = dd::load_pairs(o.holdout > 0 ? std::vector<dd::ImagePair>(split, pairs.end()) : pairs, o.channels,
                         table ? &*table : nullptr, d.classes);
  d.channels = static_cast<int>(d.val.images.at(0).shape().c);
  return d;
}

// Confusion over whole images, one at a time (sizes may differ).
dd::ConfusionMatrix evaluate_images(dd::DDUNet& model, const dd::LabeledImages& set, int classes, double* loss) {
  dd::ConfusionMatrix m(classes);
  double total = 0;
  for (std::size_t i = 0; i < set.size(); ++i) {
    const dd::Evaluation e = dd::evaluate(model, {set.images[i], set.masks[i]}, classes, 1);
    total += e.loss;
    m += e.confusion;
  }
  if (loss) *loss = set.size() ? total / double(set.size()) : 0.0;
  return m;
}

void print_metrics(const dd::ConfusionMatrix& m, const std::vector<std::string>& names) {
  std::printf("%-14s %8s\n", "class", "IoU");
  for (int c = 0; c < m.classes(); ++c)
    std::printf("%-14s %8.4f\n", (c < int(names.size()) ? names[std::size_t(c)] : "class " + std::to_string(c)).c_str(),
                m.iou(c));
  std::printf("%-14s %8.4f\n%-14s %8.4f\n", "mIoU", m.mean_iou(), "pixel acc", m.pixel_accuracy());
}

// ---------------------------------------------------------------- train
struct TrainCmd {
  DataOptions data;
  dd::ModelSpec spec;
  std::string exchange = "Y", grid = "1x1", out = "ddunet-run";
  dd::TrainOptions fit;
  std::int64_t crop = 256, crops_per_image = 8;
  bool no_augment = false, resume = false, quiet = false;
  std::uint64_t seed = 1;
  int threads = 0;
  std::string device = "cpu", precision = "fp32";
};

dd::Device parse_device(const std::string& d) {
  DD_CHECK(d == "cpu" || d == "cuda", "--device {}: use cpu or cuda (cuda needs a build with -DDD_CUDA=ON)", d);
  return d == "cuda" ? dd::Device::cuda : dd::Device::cpu;
}

// --precision on the GPU: fp32 (the default: no TF32), tf32, or mixed precision bf16 / fp16 (half
// convolutions and activations, fp32 master weights; fp16 training with dynamic loss scaling, as
// its activation gradients would underflow otherwise). The CPU computes in fp32.
void apply_precision(const std::string& p, const std::string& device, dd::TrainOptions* fit = nullptr) {
  DD_CHECK(p == "fp32" || p == "tf32" || p == "bf16" || p == "fp16", "--precision {}: use fp32, tf32, bf16 or fp16",
           p);
  if (p == "fp32") return;
  DD_CHECK(device == "cuda", "--precision {} is for --device cuda: the CPU computes in fp32", p);
#if DD_WITH_CUDA
  auto& s = dd::cuda::conv_settings();
  s.precision = p == "tf32" ? dd::cuda::Precision::tf32
                : p == "bf16" ? dd::cuda::Precision::bf16
                              : dd::cuda::Precision::fp16;
  s.half_activations = p == "bf16" || p == "fp16";
  if (fit && p == "fp16") fit->loss_scaling = true;
#else
  (void)fit;
#endif
}

int run_train(TrainCmd& c) {
  if (c.threads > 0) dd::set_num_threads(c.threads);
  fs::create_directories(c.out);
  const std::string last = (fs::path(c.out) / "last.safetensors").string();
  const std::string best = (fs::path(c.out) / "best.safetensors").string();
  const std::string log = (fs::path(c.out) / "log.csv").string();

  Data data = load_data(c.data, c.seed, true);
  c.spec.net.in_channels = data.circles ? 1 : data.channels;
  c.spec.net.classes = data.circles ? 3 : data.classes;
  c.spec.grid = parse_grid(c.grid);
  DD_CHECK(c.exchange == "Y" || c.exchange == "N", "--exchange {}: expected Y (stitched) or N (local)", c.exchange);
  c.spec.mode = c.exchange == "Y" ? dd::Exchange::stitched : dd::Exchange::local;
  c.fit.shuffle_seed = c.seed;

  std::optional<dd::safetensors::File> resumed;
  if (c.resume) {
    resumed = dd::safetensors::load(last);
    const dd::ModelSpec saved = dd::spec_from_checkpoint(*resumed, last);
    DD_CHECK(dd::spec_metadata(saved) == dd::spec_metadata(c.spec),
             "--resume: {} holds {} but the flags describe {}; use the same model flags", last, saved.describe(),
             c.spec.describe());
  }
  apply_precision(c.precision, c.device, &c.fit);
  dd::DDUNet model = dd::make_model(c.spec, c.seed, dd::CpuWorkers(c.threads));
  model.to(parse_device(c.device));  // before the optimizer: it keeps views of the parameters
  ranks.place(model);
  if (!ranks.root()) c.quiet = true;
  dd::Trainer<dd::DDUNet> trainer(model, c.spec.net.classes, c.fit);
  if (resumed) {
    dd::load_weights(*resumed, model, last);
    dd::load_training_state(*resumed, model, trainer, last);
    std::printf("resuming %s after epoch %d\n", last.c_str(), trainer.epochs_done());
  }
  std::printf("training %s, %zu parameters, receptive field %lld px, %d threads, %d ranks\n", c.spec.describe().c_str(),
              model.num_params(),
              (long long)(model.network().receptive_field() +
                          (c.spec.F > 0 ? model.communication().receptive_field_on_coarse_grid() - 1 : 0) *
                              model.downsampling()),
              dd::num_threads(), ranks.size);
  std::ofstream csv;
  if (ranks.root()) csv.open(log, resumed ? std::ios::app : std::ios::trunc);
  if (ranks.root() && !resumed) csv << "epoch,train_loss,val_loss,val_miou,val_pixel_accuracy,lr,seconds,images_per_second\n";

  const auto t_start = std::chrono::steady_clock::now();
  while (!trainer.done()) {
    const int epoch = trainer.epochs_done() + 1;
    dd::SegmentationSet train_set = data.circles_train, val_set = data.circles_val;
    if (!data.circles) {
      // The crops of epoch e depend only on the seed and e, so --resume sees the same data.
      dd::Rng rng(c.seed * 1000003ull + std::uint64_t(epoch));
      train_set = dd::sample_crops(data.train, c.crop, c.crops_per_image, rng, !c.no_augment);
      val_set = {};
    }
    float lr = trainer.optimizer().lr();
    const auto t0 = std::chrono::steady_clock::now();
    const dd::EpochStats st = trainer.run_epoch(train_set, val_set, [&](int e, std::int64_t b, std::int64_t n, double loss, double ips) {
      if (c.quiet) return;
      const double eta = double(n - b) * c.fit.batch / std::max(ips, 1e-9);
      std::fprintf(stderr, "\repoch %3d/%d [%s] %4lld/%lld loss %.4f lr %.3g %6.1f img/s ETA %4.0fs ", e, c.fit.epochs,
                   bar(b, n).c_str(), (long long)b, (long long)n, loss, lr, ips, eta);
    });
    (void)t0;
    double val_loss = st.val_loss, val_miou = st.val_miou, val_acc = 0;
    if (!data.circles && data.val.size() > 0) {
      // Folder validation on whole held-out images; the schedules were fed the training loss.
      const dd::ConfusionMatrix m = evaluate_images(model, data.val, c.spec.net.classes, &val_loss);
      val_miou = m.mean_iou();
      val_acc = m.pixel_accuracy();
    }
    if (ranks.root())
      std::fprintf(stderr, "%sepoch %3d: train %.4f  val %.4f  val mIoU %.4f  val acc %.4f  %.1fs  %.1f img/s%s\n",
                   c.quiet ? "" : "\r", st.epoch, st.train_loss, val_loss, val_miou, val_acc, st.seconds,
                   st.images_per_second, st.best ? "  *" : "");
    if (!ranks.root()) continue;  // every rank holds the same model; rank 0 writes it
    csv << fmt::format("{},{},{},{},{},{},{},{}\n", st.epoch, st.train_loss, val_loss, val_miou, val_acc, st.lr,
                       st.seconds, st.images_per_second)
        << std::flush;
    dd::save_checkpoint(last, c.spec, model, &trainer);
    if (st.best) dd::save_checkpoint(best, c.spec, model);
  }
  trainer.restore_best();
  std::printf("done in %.0fs; best model: %s, last state: %s, log: %s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(), best.c_str(),
              last.c_str(), log.c_str());
  return 0;
}

// ---------------------------------------------------------------- eval
struct EvalCmd {
  DataOptions data;
  std::string checkpoint, grid;
  std::uint64_t seed = 1;
  int threads = 0;
  std::string device = "cpu", precision = "fp32";
};

dd::DDUNet load_model(const std::string& path, const std::string& grid, int threads, dd::ModelSpec* spec_out = nullptr) {
  const dd::safetensors::File f = dd::safetensors::load(path);
  dd::ModelSpec spec = dd::spec_from_checkpoint(f, path);
  if (!grid.empty()) spec.grid = parse_grid(grid);
  dd::DDUNet model = dd::make_model(spec, 0, dd::CpuWorkers(threads));
  dd::load_weights(f, model, path);
  ranks.place(model);
  model.eval();
  if (spec_out) *spec_out = spec;
  return model;
}

int run_eval(EvalCmd& c) {
  if (c.threads > 0) dd::set_num_threads(c.threads);
  dd::ModelSpec spec;
  apply_precision(c.precision, c.device);
  dd::DDUNet model = load_model(c.checkpoint, c.grid, c.threads, &spec);
  model.to(parse_device(c.device));
  c.data.classes = spec.net.classes;
  c.data.channels = spec.net.in_channels;
  const Data data = load_data(c.data, c.seed, false);
  DD_CHECK(data.circles ? spec.net.classes == 3 : data.classes == spec.net.classes,
           "the checkpoint predicts {} classes but the masks have {}", spec.net.classes, data.classes);
  const auto table = parse_colors(c.data.colors);
  std::printf("evaluating %s on %s\n", spec.describe().c_str(),
              data.circles ? "circles" : fmt::format("{} images", data.val.size()).c_str());
  dd::ConfusionMatrix m(spec.net.classes);
  if (data.circles)
    m = dd::evaluate(model, data.circles_val, 3).confusion;
  else
    m = evaluate_images(model, data.val, spec.net.classes, nullptr);
  print_metrics(m, table ? table->names : std::vector<std::string>{"background", "line", "circle"});
  return 0;
}

// ---------------------------------------------------------------- predict
struct PredictCmd {
  std::string checkpoint, input, output, overlay, grid, colors;
  int threads = 0;
  std::string device = "cpu", precision = "fp32";
};

int run_predict_ranks(PredictCmd& c);

int run_predict(PredictCmd& c) {
  apply_precision(c.precision, c.device);
  if (ranks.size > 1) return run_predict_ranks(c);
  if (c.threads > 0) dd::set_num_threads(c.threads);
  dd::ModelSpec spec;
  dd::DDUNet model = load_model(c.checkpoint, c.grid, c.threads, &spec);
  model.to(parse_device(c.device));  // tiles follow the model; the class map is written on the host
  // 8-bit pixels stay as loaded; tiles are converted to floats one at a time.
  const dd::io::Image img = dd::io::load_image_u8(c.input, spec.net.in_channels);
  const auto H = img.height, W = img.width;
  const auto t0 = std::chrono::steady_clock::now();
  dd::TileSource source = [&](const dd::TileRect& r) { return img.tile(r.y, r.h, r.x, r.w); };
  dd::TiledPredictor<dd::DynamicUNet, dd::DynamicCommNet> predictor(model, H, W, source);
  const dd::Grid& g = predictor.grid();
  std::printf("segmenting %s (%lldx%lld) with %s; %lld subimages of at most %lldx%lld\n", c.input.c_str(), (long long)W,
              (long long)H, spec.describe().c_str(), (long long)g.count(), (long long)g.widths()[0],
              (long long)g.heights()[0]);
  // The class map is written band by band: one grid row of tiles is decoded when the writer
  // first asks for its rows.
  std::vector<std::uint8_t> band;  // classes of the decoded grid row
  std::int64_t band_row = -1, band_y = 0, band_h = 0;
  auto decode_band_for = [&](std::int64_t y) {
    while (y >= band_y + band_h) {
      ++band_row;
      band_y = g.row_offset(band_row);
      band_h = g.heights()[std::size_t(band_row)];
      band.assign(std::size_t(band_h * W), 0);
      predictor.decode_row(band_row, [&](const dd::TileRect& r, const dd::Tensor& logits) {
        const dd::Tensor cls = dd::io::argmax_classes(logits);
        for (std::int64_t yy = 0; yy < r.h; ++yy)
          for (std::int64_t xx = 0; xx < r.w; ++xx)
            band[std::size_t(yy * W + r.x + xx)] = static_cast<std::uint8_t>(cls.at(0, 0, yy, xx));
      });
      std::fprintf(stderr, "\r[%s] row %lld/%lld of tiles", bar(band_row + 1, g.rows()).c_str(),
                   (long long)band_row + 1, (long long)g.rows());
    }
  };
  dd::io::save_gray_png_rows(c.output, int(W), int(H), [&](int row0, int rows, std::uint8_t* buf) {
    for (int r = 0; r < rows; ++r) {
      decode_band_for(row0 + r);
      std::memcpy(buf + std::size_t(r) * std::size_t(W), band.data() + std::size_t((row0 + r - band_y) * W), std::size_t(W));
    }
  });
  std::fprintf(stderr, "\n");
  std::printf("wrote class map %s in %.1fs\n", c.output.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (!c.overlay.empty()) {
    const auto table = parse_colors(c.colors);
    const dd::io::ColorTable colors = table ? *table : palette(spec.net.classes);
    DD_CHECK(int(colors.colors.size()) >= spec.net.classes, "--colors has {} colours for {} classes",
             colors.colors.size(), spec.net.classes);
    const dd::io::Image cls = dd::io::load_image_u8(c.output, 1);
    dd::io::save_rgb_png_rows(c.overlay, int(W), int(H), [&](int row0, int rows, std::uint8_t* buf) {
      for (int r = 0; r < rows; ++r)
        for (std::int64_t x = 0; x < W; ++x) {
          const auto& col = colors.colors[cls.at(row0 + r, x, 0)];
          for (int ch = 0; ch < 3; ++ch) {
            const float v = img.at(row0 + r, x, spec.net.in_channels == 3 ? ch : 0);
            buf[(std::size_t(r) * std::size_t(W) + std::size_t(x)) * 3 + std::size_t(ch)] =
                static_cast<std::uint8_t>(0.5f * v + 0.5f * col[std::size_t(ch)] + 0.5f);
          }
        }
    });
    std::printf("wrote overlay %s\n", c.overlay.c_str());
  }
  return 0;
}

// predict under mpirun: each rank reads only its own subimages of the input (region reader), the
// ranks run the DDU-Net together, and rank 0 writes the class map (and overlay) band by band, one
// row of subimages gathered at a time.
int run_predict_ranks(PredictCmd& c) {
#if DD_WITH_MPI
  DD_CHECK(c.device == "cpu", "predict under mpirun runs on the CPU; --device {} is for one process", c.device);
  if (c.threads > 0) dd::set_num_threads(c.threads);
  dd::ModelSpec spec;
  dd::DDUNet model = load_model(c.checkpoint, c.grid, c.threads, &spec);
  const dd::io::ImageInfo info = dd::io::image_info(c.input);
  const std::int64_t H = info.height, W = info.width, C = spec.net.in_channels;
  const dd::Shape image{1, C, H, W};
  const dd::Grid g = model.grid_for(image);
  const std::vector<std::int64_t> mine = model.local_clones(g.count());
  std::printf("segmenting %s (%lldx%lld) with %s on %d ranks; %lld subimages of at most %lldx%lld\n", c.input.c_str(),
              (long long)W, (long long)H, spec.describe().c_str(), ranks.size, (long long)g.count(),
              (long long)g.widths()[0], (long long)g.heights()[0]);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<dd::Var> tiles;
  for (const std::int64_t k : mine) {
    const std::int64_t i = k / g.cols(), j = k % g.cols(), h = g.heights()[std::size_t(i)], w = g.widths()[std::size_t(j)];
    tiles.emplace_back(dd::io::read_region(c.input, g.row_offset(i), g.col_offset(j), h, w, int(C)).tile(0, h, 0, w));
  }
  std::vector<dd::Tensor> classes;  // this rank's class maps
  {
    dd::NoGrad ng;
    for (const dd::Var& y : model.forward_tiles(image, tiles)) classes.push_back(dd::io::argmax_classes(y.value()));
  }
  tiles.clear();
  // Rows of subimages, gathered to every rank (a band is small) and written by rank 0.
  std::vector<std::uint8_t> band;
  std::int64_t band_row = -1, band_y = 0, band_h = 0;
  auto gather_row = [&](std::int64_t row) {
    std::vector<float> send;
    for (std::size_t t = 0; t < mine.size(); ++t)
      if (mine[t] / g.cols() == row) {
        const std::vector<float> v = classes[t].to_vector();
        send.insert(send.end(), v.begin(), v.end());
      }
    std::vector<std::int64_t> counts;
    const std::vector<float> all = ranks.world->all_gather_v(send.data(), std::int64_t(send.size()), counts);
    if (!ranks.root()) return;  // only rank 0 writes
    band_y = g.row_offset(row), band_h = g.heights()[std::size_t(row)];
    band.assign(std::size_t(band_h * W), 0);
    std::size_t at = 0;  // clones are owned in contiguous blocks: rank order is column order
    for (std::int64_t j = 0; j < g.cols(); ++j) {
      const std::int64_t w = g.widths()[std::size_t(j)], x0 = g.col_offset(j);
      for (std::int64_t yy = 0; yy < band_h; ++yy)
        for (std::int64_t xx = 0; xx < w; ++xx) band[std::size_t(yy * W + x0 + xx)] = static_cast<std::uint8_t>(all[at++]);
    }
  };
  auto band_for = [&](std::int64_t y) {
    while (y >= band_y + band_h) gather_row(++band_row);
  };
  if (ranks.root()) {
    dd::io::save_gray_png_rows(c.output, int(W), int(H), [&](int row0, int rows, std::uint8_t* buf) {
      for (int r = 0; r < rows; ++r) {
        band_for(row0 + r);
        std::memcpy(buf + std::size_t(r) * std::size_t(W), band.data() + std::size_t((row0 + r - band_y) * W), std::size_t(W));
      }
    });
  } else {
    for (std::int64_t row = 0; row < g.rows(); ++row) gather_row(row);  // the same collectives as rank 0
  }
  ranks.world->barrier();
  std::printf("wrote class map %s in %.1fs\n", c.output.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (!c.overlay.empty() && ranks.root()) {
    const auto table = parse_colors(c.colors);
    const dd::io::ColorTable colors = table ? *table : palette(spec.net.classes);
    DD_CHECK(int(colors.colors.size()) >= spec.net.classes, "--colors has {} colours for {} classes",
             colors.colors.size(), spec.net.classes);
    // Rows of the input and of the written class map, read back a few at a time.
    dd::io::save_rgb_png_rows(c.overlay, int(W), int(H), [&](int row0, int rows, std::uint8_t* buf) {
      const dd::io::Image in = dd::io::read_region(c.input, row0, 0, rows, W, int(C));
      const dd::io::Image cls = dd::io::read_region(c.output, row0, 0, rows, W, 1);
      for (int r = 0; r < rows; ++r)
        for (std::int64_t x = 0; x < W; ++x) {
          const auto& col = colors.colors[cls.at(r, x, 0)];
          for (int ch = 0; ch < 3; ++ch) {
            const float v = in.at(r, x, C == 3 ? ch : 0);
            buf[(std::size_t(r) * std::size_t(W) + std::size_t(x)) * 3 + std::size_t(ch)] =
                static_cast<std::uint8_t>(0.5f * v + 0.5f * col[std::size_t(ch)] + 0.5f);
          }
        }
    });
    std::printf("wrote overlay %s\n", c.overlay.c_str());
  }
  return 0;
#else
  (void)c;
  dd::fail("predict on several ranks needs a build with the MPI backend");
#endif
}

// ---------------------------------------------------------------- summary
struct SummaryCmd {
  dd::UNetConfig net{4, 3, 3, 16};
  int F = 64, comm_layers = 3, comm_kernel = 5, batch = 1;
  std::string grid = "2x2", size = "1024x1024";
};

int run_summary(SummaryCmd& c) {
  const auto [h, w] = parse_size(c.size);
  const dd::ModelSummary s = dd::summarize(c.net, c.F, c.comm_layers, c.comm_kernel, h, w, parse_grid(c.grid), c.batch);
  std::printf("%s", s.table().c_str());
  return 0;
}

// ---------------------------------------------------------------- synth
struct SynthCmd {
  std::string output, size = "16384x16384";
  std::uint64_t seed = 1;
};

// A large gray test image of scattered discs, written band by band.
int run_synth(SynthCmd& c) {
  const auto [h, w] = parse_size(c.size);
  dd::io::save_gray_png_rows(c.output, int(w), int(h), [&](int row0, int rows, std::uint8_t* buf) {
    for (int r = 0; r < rows; ++r)
      for (std::int64_t x = 0; x < w; ++x) {
        // Discs of radius 4 on a jittered 32-pixel lattice, deterministic per cell.
        const std::int64_t y = row0 + r, cy = y / 32, cx = x / 32;
        dd::Rng cell(c.seed ^ (std::uint64_t(cy) * 0x9E3779B97F4A7C15ull) ^ (std::uint64_t(cx) * 0xC2B2AE3D27D4EB4Full));
        const bool on = cell.bernoulli(0.3f);
        const std::int64_t px = cx * 32 + cell.uniform_int(4, 27), py = cy * 32 + cell.uniform_int(4, 27);
        buf[std::size_t(r) * std::size_t(w) + std::size_t(x)] =
            on && (x - px) * (x - px) + (y - py) * (y - py) <= 16 ? 255 : 0;
      }
  });
  std::printf("wrote %s (%lldx%lld)\n", c.output.c_str(), (long long)w, (long long)h);
  return 0;
}

void add_model_flags(CLI::App* a, dd::ModelSpec& s, std::string& exchange, std::string& grid) {
  a->add_option("--depth", s.net.depth, "encoder-decoder depth D (down/up blocks)")->capture_default_str()->check(CLI::Range(1, 10));
  a->add_option("--base", s.net.base, "channels of the first block (doubling per level)")->capture_default_str()->check(CLI::PositiveNumber);
  a->add_option("--F", s.F, "feature maps communicated at the bottleneck (0: none)")->capture_default_str()->check(CLI::NonNegativeNumber);
  a->add_option("--exchange", exchange, "C: Y = stitch the subimages' maps (communication), N = each on its own")->capture_default_str();
  a->add_option("--grid", grid, "subimage grid ROWSxCOLS, one encoder-decoder clone per subimage")->capture_default_str();
  a->add_option("--comm-layers", s.comm_layers, "layers of the communication network")->capture_default_str()->check(CLI::PositiveNumber);
  a->add_option("--comm-kernel", s.comm_kernel, "kernel size of the communication network (odd)")->capture_default_str();
  a->add_option("--dropout", s.net.dropout, "Dropout2d probability in training")->capture_default_str()->check(CLI::Range(0.0, 0.99));
}
void add_data_flags(CLI::App* a, DataOptions& d, bool train) {
  a->add_option("--images", d.images, "folder of images (PNG/JPEG, gray or RGB); default: synthetic circles")->check(CLI::ExistingDirectory);
  a->add_option("--masks", d.masks, "folder of masks with the images' file names")->check(CLI::ExistingDirectory);
  a->add_option("--colors", d.colors, "mask colours: binary, deepglobe, or \"r,g,b;r,g,b;...\" (class i = colour i); default: masks hold class indices");
  a->add_option("--holdout", d.holdout, train ? "last N images (sorted by name) held out for validation"
                                              : "evaluate only the last N images (the training run's hold-out)")->check(CLI::NonNegativeNumber);
  if (train) {
    a->add_option("--classes", d.classes, "number of classes when masks hold class indices")->check(CLI::PositiveNumber);
    a->add_option("--channels", d.channels, "input channels: 0 = as stored, 1 = gray, 3 = RGB")->capture_default_str()->check(CLI::IsMember({0, 1, 3}));
  }
  a->add_option("--k", d.k, "circles: subimages per (k*32)x32 image")->capture_default_str()->check(CLI::Range(2, 64));
  a->add_option(train ? "--circles-train" : "--circles-count", train ? d.circles_train : d.circles_val,
                "circles: number of images")->capture_default_str()->check(CLI::PositiveNumber);
  if (train) a->add_option("--circles-val", d.circles_val, "circles: validation images")->capture_default_str()->check(CLI::PositiveNumber);
}

}  // namespace

constexpr const char* kPrecisionHelp =
    "GPU arithmetic: fp32 (no TF32), tf32, or mixed precision bf16 / fp16 (half convolutions and activations, fp32 "
    "weights; fp16 trains with loss scaling)";

int main(int argc, char** argv) {
  CLI::App app{"ddunet: domain-decomposed U-Nets (DDU-Net, Verburg et al. 2025) for images larger than one device"};
  app.require_subcommand(1);

  TrainCmd tc;
  tc.spec.net = {3, 1, 3, 16, 0.1f};
  tc.fit.epochs = 40, tc.fit.batch = 8, tc.fit.lr = 1e-3f, tc.fit.min_epochs = 10, tc.fit.stop_patience = 8;
  auto* train = app.add_subcommand("train", "train a DDU-Net (or a U-Net: --grid 1x1 --F 0) on circles or on a folder of images and masks");
  add_model_flags(train, tc.spec, tc.exchange, tc.grid);
  add_data_flags(train, tc.data, true);
  train->add_option("--crop", tc.crop, "folder data: side of the random training crops")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--crops-per-image", tc.crops_per_image, "folder data: crops per image per epoch")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_flag("--no-augment", tc.no_augment, "folder data: no flips / 90-degree rotations");
  train->add_option("--epochs", tc.fit.epochs, "maximum epochs")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--min-epochs", tc.fit.min_epochs, "no early stop before this epoch")->capture_default_str();
  train->add_option("--patience", tc.fit.stop_patience, "early stop after this many epochs without improvement")->capture_default_str();
  train->add_option("--lr-patience", tc.fit.lr_patience, "halve the learning rate after this many epochs without improvement")->capture_default_str();
  train->add_option("--batch", tc.fit.batch, "batch size")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--lr", tc.fit.lr, "Adam learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--seed", tc.seed, "seed for weights, data order, crops and dropout")->capture_default_str();
  train->add_option("--threads", tc.threads, "worker threads (0: all cores)")->capture_default_str()->check(CLI::NonNegativeNumber);
  train->add_option("--device", tc.device, "cpu, or cuda (a build with -DDD_CUDA=ON)")->capture_default_str();
  train->add_option("--precision", tc.precision, kPrecisionHelp)->capture_default_str();
  train->add_option("--out", tc.out, "folder for last.safetensors (every epoch), best.safetensors and log.csv")->capture_default_str();
  train->add_flag("--resume", tc.resume, "continue from OUT/last.safetensors with identical results");
  train->add_flag("--quiet", tc.quiet, "no progress bar");

  EvalCmd ec;
  auto* eval = app.add_subcommand("eval", "per-class IoU, mIoU and pixel accuracy of a checkpoint on a folder (or circles)");
  eval->add_option("--checkpoint", ec.checkpoint, "a .safetensors checkpoint written by train")->required()->check(CLI::ExistingFile);
  eval->add_option("--grid", ec.grid, "subimage grid for evaluation (default: the training grid)");
  add_data_flags(eval, ec.data, false);
  eval->add_option("--seed", ec.seed, "circles: data seed (the training seed gives its validation set)")->capture_default_str();
  eval->add_option("--threads", ec.threads, "worker threads (0: all cores)")->capture_default_str();
  eval->add_option("--device", ec.device, "cpu, or cuda (a build with -DDD_CUDA=ON)")->capture_default_str();
  eval->add_option("--precision", ec.precision, kPrecisionHelp)->capture_default_str();

  PredictCmd pc;
  auto* predict = app.add_subcommand("predict", "segment one image of any size, tile by tile with bounded memory");
  predict->add_option("--checkpoint", pc.checkpoint, "a .safetensors checkpoint written by train")->required()->check(CLI::ExistingFile);
  predict->add_option("--input", pc.input, "image to segment (PNG/JPEG)")->required()->check(CLI::ExistingFile);
  predict->add_option("--output", pc.output, "class-index PNG to write (8-bit gray, pixel = class)")->required();
  predict->add_option("--overlay", pc.overlay, "also write the class colours blended over the image (PNG)");
  predict->add_option("--colors", pc.colors, "overlay colours: binary, deepglobe or \"r,g,b;...\" (default: a palette)");
  predict->add_option("--grid", pc.grid, "subimage grid (default: the training grid); a 16384x16384 image wants e.g. 64x64");
  predict->add_option("--threads", pc.threads, "worker threads (0: all cores)")->capture_default_str();
  predict->add_option("--device", pc.device, "cpu, or cuda (a build with -DDD_CUDA=ON; one process)")
      ->capture_default_str();
  predict->add_option("--precision", pc.precision, kPrecisionHelp)->capture_default_str();

  SummaryCmd sc;
  auto* summary = app.add_subcommand("summary", "architecture table (paper Table 5): per block sizes, feature maps, weights, memory");
  summary->add_option("--depth", sc.net.depth, "depth D")->capture_default_str()->check(CLI::Range(1, 10));
  summary->add_option("--base", sc.net.base, "base channels")->capture_default_str()->check(CLI::PositiveNumber);
  summary->add_option("--channels", sc.net.in_channels, "input channels")->capture_default_str()->check(CLI::PositiveNumber);
  summary->add_option("--classes", sc.net.classes, "classes")->capture_default_str()->check(CLI::PositiveNumber);
  summary->add_option("--F", sc.F, "communicated feature maps (0: U-Net)")->capture_default_str()->check(CLI::NonNegativeNumber);
  summary->add_option("--comm-layers", sc.comm_layers, "communication layers")->capture_default_str();
  summary->add_option("--comm-kernel", sc.comm_kernel, "communication kernel size")->capture_default_str();
  summary->add_option("--grid", sc.grid, "subimage grid ROWSxCOLS")->capture_default_str();
  summary->add_option("--size", sc.size, "image size HxW")->capture_default_str();
  summary->add_option("--batch", sc.batch, "images per step")->capture_default_str()->check(CLI::PositiveNumber);

  SynthCmd yc;
  auto* synth = app.add_subcommand("synth", "write a large synthetic gray test image (discs), band by band");
  synth->add_option("--output", yc.output, "PNG to write")->required();
  synth->add_option("--size", yc.size, "HxW")->capture_default_str();
  synth->add_option("--seed", yc.seed, "seed")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  try {
    start_ranks(argc, argv);
    if (*train) return run_train(tc);
    if (*eval) return run_eval(ec);
    if (*predict) return run_predict(pc);
    if (*summary) return run_summary(sc);
    if (*synth) return run_synth(yc);
  } catch (const std::exception& e) {
    if (ranks.size > 1) std::fprintf(stderr, "\nddunet rank %d of %d: error: %s\n", ranks.rank, ranks.size, e.what());
    else std::fprintf(stderr, "\nddunet: error: %s\n", e.what());
#if DD_WITH_MPI
    // The other ranks may be waiting in a collective: end the whole job now instead of hanging.
    if (ranks.size > 1) dd::mpi::Environment::abort(1);
#endif
    return 1;
  }
  return 0;
}
