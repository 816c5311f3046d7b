//! `clip2gan bench`: the speed measurements' flags and set-up (the
//! generator, the engine under concurrent clients, the pair bank, CLIP);
//! the measuring is `clip2gan::bench`. Each prints one JSON line.

use clap::Subcommand;
use clip2gan::config::Config;
use clip2gan::error::Error;
use clip2gan::generator::{self, stylegan2::StyleGan2};
use clip2gan::{bench, clip, device, image_io};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the image generator (z -> image).
    Generator {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Output side (default: the generator's resolution).
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// mobilestylegan (the fetched weights) or stylegan2 (random
        /// config-f weights at --resolution: no checkpoint needed).
        #[arg(long, default_value = "mobilestylegan")]
        kind: String,
        /// Resolution of the random StyleGAN2 (--kind stylegan2).
        #[arg(long, default_value_t = 1024)]
        resolution: usize,
    },
    /// Concurrent clients against the inference engine, batching on and
    /// off, with where the time goes per image and the generator's own best
    /// rate from the same run (a table on stderr, JSON on stdout).
    Engine {
        /// Clients at once; several (e.g. 1,16) run one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 2)]
        jobs_per_client: usize,
        /// The engine's batch (engine.max_batch's default).
        #[arg(long, default_value_t = 4)]
        max_batch: usize,
        /// Repeat the generator sweep and every case this many times and
        /// quote the median ratios (a few-second run drifts by several
        /// percent on a shared CPU).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The pair bank's rate (generator, then CLIP's image encoder, as first
    /// use and `train` build it) against the limit of the two at their own
    /// speed, measured in the same run (random ViT-B/32-shaped CLIP: the
    /// same work as real weights).
    Bank {
        /// Pairs per round (the bank embeds 8 at a time; more per round
        /// steadies the figures on a shared machine).
        #[arg(long, default_value_t = 16)]
        pairs: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Where the memory goes (JSON on stdout, a table on stderr): the
    /// resident set after loading each model, the peak of one engine batch
    /// of each size up to --max-batch and of a photo job, the allocator's
    /// slack.
    Memory {
        #[arg(long, default_value_t = 4)]
        max_batch: usize,
        /// A CLIP checkpoint directory (transformers layout), loaded as the
        /// bot loads it; default: random ViT-B/32-shaped weights.
        #[arg(long)]
        clip: Option<std::path::PathBuf>,
    },
    /// Mixed jobs (imagine, edit, morph, photo) from concurrent clients
    /// through one engine at the configured settings; the resident set and
    /// the allocator's bytes in use at each mark (no job in flight there)
    /// and the drift from the first mark to the last.
    Soak {
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Job counts at which to measure (ascending).
        #[arg(long, value_delimiter = ',', default_value = "200,1000,2000")]
        marks: Vec<usize>,
    },
    /// Quality mode: seconds per refinement step at each batch (random
    /// ViT-B/32-shaped CLIP, the configured generator), eight steps against
    /// the 10 s target, and fast jobs' p95 with and without a refinement
    /// running.
    Refine {
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        batch: Vec<usize>,
        /// Steps timed per batch (the first is reported but not in the median).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Fast jobs timed alone and beside a refinement (0: skip).
        #[arg(long, default_value_t = 6)]
        fast_jobs: usize,
    },
    /// Time CLIP's text and image encoders at ViT-B/32 shapes (random
    /// weights) against an sgemm of the same run.
    Clip {
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also time the portable path (candle-transformers' model), interleaved.
        #[arg(long)]
        candle: bool,
    },
}

pub fn run(cfg: &Config, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Generator {
            batch,
            size,
            iters,
            kind,
            resolution,
        } => {
            if batch == 0 {
                return Err(Error::invalid("--batch must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let g: Box<dyn generator::Generator> = match kind.as_str() {
                "mobilestylegan" => {
                    let g = generator::GeneratorConfig {
                        kind,
                        ..cfg.generator.clone()
                    };
                    generator::open(&g, &cfg.models_dir, &dev, true)?
                }
                "stylegan2" => Box::new(StyleGan2::random_config_f(resolution, 0, &dev)?),
                _ => {
                    return Err(Error::invalid(format!(
                    "generator kind {kind:?} is not in this build: use mobilestylegan or stylegan2"
                ))
                    .into())
                }
            };
            let size = size.unwrap_or(g.resolution());
            image_io::check_size(size, g.resolution())?;
            let r = bench::generator(g.as_ref(), batch, size, iters)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Engine {
            concurrency,
            jobs_per_client,
            max_batch,
            rounds,
        } => {
            if concurrency.contains(&0) || jobs_per_client == 0 || max_batch == 0 || rounds == 0 {
                return Err(Error::invalid(
                    "--concurrency, --jobs-per-client, --max-batch and --rounds must be at least 1",
                )
                .into());
            }
            let dev = device::select(&cfg.device)?;
            let setup = cfg.bench_setup();
            let r = bench::engine(
                &setup,
                &dev,
                &concurrency,
                jobs_per_client,
                max_batch,
                rounds,
            )?;
            eprint!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Bank { pairs, rounds } => {
            if pairs == 0 || rounds == 0 {
                return Err(Error::invalid("--pairs and --rounds must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let g = generator::open(&cfg.generator, &cfg.models_dir, &dev, true)?;
            let c = clip::Clip::with_random_weights(clip::config::vit_base_patch32(), &dev)?;
            let spec = clip2gan::train::data::SampleSpec {
                truncation: cfg.train.truncation,
                style_mixing: 0.0,
                image_size: clip2gan::train::data::effective_image_size(
                    cfg.train.image_size,
                    g.resolution(),
                ),
                gen_batch: cfg.train.gen_batch,
            };
            let name = "ViT-B/32 shapes, random weights";
            let r = bench::bank(g.as_ref(), &c, name, &spec, pairs, rounds)?;
            eprintln!("{}", r.summary());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Memory { max_batch, clip } => {
            if max_batch == 0 {
                return Err(Error::invalid("--max-batch must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let r = bench::memory(&cfg.bench_setup(), &dev, clip.as_deref(), max_batch)?;
            eprint!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Soak { concurrency, marks } => {
            if concurrency == 0 || marks.is_empty() || marks.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::invalid(
                    "--concurrency must be at least 1 and --marks ascending job counts",
                )
                .into());
            }
            let dev = device::select(&cfg.device)?;
            let setup = cfg.bench_setup();
            let engine = bench::warm_engine(&setup, &dev, concurrency, cfg.engine.max_batch)?;
            let r = bench::soak(&engine, concurrency, &marks)?;
            eprint!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Refine {
            batch,
            steps,
            fast_jobs,
        } => {
            if batch.contains(&0) || batch.iter().any(|b| *b > 16) {
                return Err(Error::invalid("--batch: 1 to 16 latents").into());
            }
            let dev = device::select(&cfg.device)?;
            let r = bench::refine(&cfg.bench_setup(), &dev, &batch, steps, fast_jobs)?;
            for c in &r.cases {
                eprintln!(
                    "batch {}: {:.2} s/step (first {:.2} s); 8 steps {:.1} s = {:.2}x the {} s target",
                    c.batch,
                    c.median_step_s,
                    c.step_s[0],
                    c.eight_steps_s,
                    c.eight_steps_over_target,
                    bench::EIGHT_STEPS_TARGET_S
                );
            }
            if let Some(f) = &r.fast {
                eprintln!(
                    "fast jobs p95: {:.0} ms alone, {:.0} ms beside a refinement ({:.2}x; {} steps ran meanwhile)",
                    f.alone_p95_ms, f.during_refinement_p95_ms, f.ratio, f.refinement_steps
                );
            }
            eprintln!("peak RSS {:.0} MB", r.peak_rss_mb);
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Clip { iters, candle } => {
            let dev = device::select(&cfg.device)?;
            let c = clip::Clip::with_random_weights(clip::config::vit_base_patch32(), &dev)?;
            let r = bench::clip(&c, "ViT-B/32 shapes, random weights", iters, candle)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
