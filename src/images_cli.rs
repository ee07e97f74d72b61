//! `keelson images list|pull|import|remove`: the operator's view of the node's image store,
//! the way `k3s crictl images` is used. Wiring only; the work is in `node::images`.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::cli::{ImagesArgs, ImagesCommand};
use crate::config::Host;
use crate::node::images::{self, ImageStore, Platform, Progress, Registries, RegistryAuth};

pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| Host::current().default_data_dir());
    let root = data_dir.join("agent/images");
    let mut registries = Registries::load(&args.private_registry)?;
    registries.disable_default_endpoint = args.disable_default_registry_endpoint;
    let platform = match &args.command {
        ImagesCommand::Pull {
            platform: Some(p), ..
        } => p
            .parse::<Platform>()
            .map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
        _ => Platform::host(),
    };
    let store = ImageStore::open_for(&root, registries, platform)?;
    match args.command {
        ImagesCommand::List { quiet } => list(&store, quiet),
        ImagesCommand::Pull { image, creds, .. } => pull(&store, &image, creds.as_deref()).await,
        ImagesCommand::Import { paths } => {
            let paths = if paths.is_empty() {
                vec![root.clone()]
            } else {
                paths
            };
            tokio::task::spawn_blocking(move || import(&store, paths)).await?
        }
        ImagesCommand::Remove { images } => {
            tokio::task::spawn_blocking(move || {
                let mut failed = 0;
                for i in &images {
                    match store.remove(i) {
                        Ok(()) => println!("Deleted: {i}"),
                        Err(e) => {
                            eprintln!("error: {e}");
                            failed += 1;
                        }
                    }
                }
                if failed > 0 {
                    bail!("{failed} of {} images not removed", images.len());
                }
                Ok(())
            })
            .await?
        }
    }
}

fn list(store: &ImageStore, quiet: bool) -> anyhow::Result<()> {
    let mut rows = store.list();
    rows.sort_by(|a, b| a.reference.cmp(&b.reference));
    if quiet {
        for r in rows {
            println!("{}", r.id);
        }
        return Ok(());
    }
    let mut table = vec![[
        "IMAGE".to_owned(),
        "TAG".into(),
        "DIGEST".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
    ]];
    for r in rows {
        let parsed = images::Reference::parse(&r.reference)?;
        let short = |s: &str| {
            s.trim_start_matches("sha256:")
                .chars()
                .take(13)
                .collect::<String>()
        };
        let digest = r
            .repo_digest
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        table.push([
            parsed.repository(),
            parsed.tag.clone().unwrap_or_else(|| "<none>".into()),
            short(&digest),
            short(&r.id),
            human(r.size),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(())
}

async fn pull(store: &ImageStore, image: &str, creds: Option<&str>) -> anyhow::Result<()> {
    let auths = match creds {
        Some(c) => {
            let (username, password) = c.split_once(':').unwrap_or((c, ""));
            let reference = images::Reference::parse(image)?;
            vec![RegistryAuth {
                registry: reference.domain.clone(),
                credentials: images::auth::Credentials::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                },
            }]
        }
        None => Vec::new(),
    };
    let progress = |p: Progress| match p {
        Progress::Resolved { registry, digest } => tracing::info!(%registry, %digest, "resolved"),
        Progress::LayerCached { digest } => tracing::info!(layer = %digest, "already present"),
        Progress::Layer {
            digest,
            downloaded,
            total,
        } => {
            tracing::info!(layer = %digest, "{} of {}", human(downloaded), human(total))
        }
        Progress::LayerDone { digest, bytes } => {
            tracing::info!(layer = %digest, "pulled {}", human(bytes))
        }
        Progress::Done {
            reference,
            downloaded,
        } => {
            tracing::info!(image = %reference, "done, {} downloaded", human(downloaded))
        }
    };
    let img = store
        .pull(image, &auths, &progress)
        .await
        .with_context(|| format!("pulling {image}"))?;
    println!("Image is up to date for {}", img.id);
    Ok(())
}

fn import(store: &ImageStore, paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut failed = 0;
    for p in paths {
        if p.is_dir() {
            let report = store.import_dir(&p)?;
            for (file, r) in report.imported {
                println!("imported {r} from {}", file.display());
            }
            for file in report.skipped {
                println!("unchanged, skipped {}", file.display());
            }
            for (file, why) in &report.failed {
                eprintln!("error: {}: {why}", file.display());
            }
            failed += report.failed.len();
        } else {
            match store.import_file(&p) {
                Ok(refs) => {
                    for r in refs {
                        println!("imported {r} from {}", p.display());
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} archives not imported");
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}
