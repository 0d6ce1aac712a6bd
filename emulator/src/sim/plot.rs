//! The simulator's plots: line charts written as SVG and PNG (plotters), for the cycles CDF,
//! walker occupancy over time, and a swept parameter's effect (hit rate against IOTLB size,
//! throughput against page size, ...).
//!
//! Text needs a font: the first of [`FONT_PATHS`] that exists (Debian's `fonts-dejavu-core`)
//! is loaded once, or the file `IOMMU_SIM_FONT` names.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

/// Where a sans-serif TrueType font is looked for.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No font to draw text with.
    #[error(
        "no font for the plots' text: install fonts-dejavu-core or set IOMMU_SIM_FONT to a .ttf file"
    )]
    NoFont,
    /// Drawing or writing failed.
    #[error("plot {path}: {msg}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// What failed.
        msg: String,
    },
    /// Nothing to plot.
    #[error("plot {0}: no data")]
    Empty(PathBuf),
}

fn font() -> Result<(), PlotError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("IOMMU_SIM_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        candidates.iter().any(|p| {
            std::fs::read(p).ok().is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    });
    if ok { Ok(()) } else { Err(PlotError::NoFont) }
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Its points.
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The title.
    pub title: String,
    /// The x axis's label.
    pub x: String,
    /// The y axis's label.
    pub y: String,
    /// Whether the x axis is logarithmic (every x must be positive).
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

impl Chart {
    /// Writes the chart as `stem.svg` and `stem.png`; returns both paths.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2], PlotError> {
        font()?;
        let svg = stem.with_extension("svg");
        let png = stem.with_extension("png");
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points {
            if self.log_x && x <= 0.0 {
                continue;
            }
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            return Err(PlotError::Empty(svg));
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        y0 = y0.min(0.0);
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let range = (x0, x1, y0, y1 * 1.05);
        self.draw(SVGBackend::new(&svg, (900, 560)).into_drawing_area(), range)
            .map_err(|msg| PlotError::Draw {
                path: svg.clone(),
                msg,
            })?;
        self.draw(
            BitMapBackend::new(&png, (900, 560)).into_drawing_area(),
            range,
        )
        .map_err(|msg| PlotError::Draw {
            path: png.clone(),
            msg,
        })?;
        Ok([svg, png])
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: DrawingArea<DB, plotters::coord::Shift>,
        (x0, x1, y0, y1): (f64, f64, f64, f64),
    ) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        area.fill(&WHITE).map_err(|x| e(&x))?;
        let mut b = ChartBuilder::on(&area);
        b.caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70);
        let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(self.x.as_str())
                    .y_desc(self.y.as_str())
                    .draw()
                    .map_err(|x| e(&x))?;
                for (i, s) in self.series.iter().enumerate() {
                    let c = colors[i % colors.len()];
                    chart
                        .draw_series(LineSeries::new(
                            s.points
                                .iter()
                                .copied()
                                .filter(|&(x, _)| !self.log_x || x > 0.0),
                            c,
                        ))
                        .map_err(|x| e(&x))?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
                    if s.points.len() <= 64 {
                        chart
                            .draw_series(
                                s.points
                                    .iter()
                                    .filter(|&&(x, _)| !self.log_x || x > 0.0)
                                    .map(|&p| Circle::new(p, 3, c.filled())),
                            )
                            .map_err(|x| e(&x))?;
                    }
                }
                if self.series.len() > 1 {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|x| e(&x))?;
                }
            }};
        }
        if self.log_x {
            body!(
                b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                    .map_err(|x| e(&x))?
            );
        } else {
            body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(|x| e(&x))?);
        }
        area.present().map_err(|x| e(&x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_written_as_svg_and_png() {
        // scripts/setup installs the font.
        font().unwrap();
        let dir = std::env::temp_dir().join(format!("sim-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Chart {
            title: "hit rate".into(),
            x: "IOTLB entries".into(),
            y: "hit rate".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "4 KiB".into(),
                    points: vec![(64.0, 0.2), (256.0, 0.5), (1024.0, 0.9)],
                },
                Series {
                    name: "2 MiB".into(),
                    points: vec![(64.0, 0.99), (256.0, 0.99), (1024.0, 0.99)],
                },
            ],
        };
        let [svg, png] = c.write(&dir.join("hit")).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("IOTLB entries"),
            "{text:.200}"
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let empty = Chart {
            series: vec![],
            ..c
        };
        assert!(matches!(
            empty.write(&dir.join("e")),
            Err(PlotError::Empty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
