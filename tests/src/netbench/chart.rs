//! The PNG bar charts of `bench-net` and `bench-services`: one panel per metric, one bar per
//! path (the median of the rounds) with a line from the lowest to the
//! highest round.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// DejaVu Sans from Debian's fonts-dejavu-core: the chart draws its text
/// with a font it loads itself rather than through fontconfig.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Which family of datapath a bar belongs to (its colour).
#[derive(Clone, Copy, Debug)]
pub enum Family {
    Veth,
    Ours,
    Bridge,
    /// kube-proxy's iptables mode.
    Iptables,
    /// kube-proxy's nftables mode.
    Nftables,
}

impl Family {
    fn color(self) -> RGBColor {
        match self {
            Family::Veth => RGBColor(130, 130, 130),
            Family::Ours => RGBColor(31, 119, 180),
            Family::Bridge => RGBColor(230, 120, 20),
            Family::Iptables => RGBColor(214, 39, 40),
            Family::Nftables => RGBColor(148, 103, 189),
        }
    }
}

/// One bar.
pub struct Bar {
    pub label: String,
    pub family: Family,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// One panel: a metric's title and its bars.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("read {FONT} for the chart's text: install fonts-dejavu-core (`cargo xtask setup`)")
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

fn value_text(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `panels` one above the other under `title` into a PNG at `out`.
pub fn render(out: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    load_font()?;
    let height = 60 + 380 * panels.len() as u32;
    let root = BitMapBackend::new(out, (1100, height)).into_drawing_area();
    let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| anyhow!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(e)?;
    let (head, body) = root.split_vertically(60);
    head.draw_text(
        title,
        &TextStyle::from(("sans-serif", 24).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
        (550, 30),
    )
    .map_err(e)?;
    for (area, panel) in body.split_evenly((panels.len(), 1)).iter().zip(panels) {
        draw_panel(area, panel).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>> {
    let n = panel.bars.len().max(1) as i32;
    let top = panel
        .bars
        .iter()
        .map(|b| b.high.max(b.value))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)?;
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| {
            if top > 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        let i = i as i32;
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.value),
            ],
            b.family.color().filled(),
        );
        r.set_margin(0, 0, 30, 30);
        r
    }))?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        let x = SegmentValue::CenterOf(i as i32);
        PathElement::new(vec![(x.clone(), b.low), (x, b.high)], BLACK.stroke_width(2))
    }))?;
    let label =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom));
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        // A few pixels right of the range line, so the two never overlap.
        EmptyElement::at((SegmentValue::CenterOf(i as i32), b.value))
            + Text::new(value_text(b.value), (6, -2), label.clone())
    }))?;
    Ok(())
}

/// Prints `table`, then writes it to `target/bench/NAME.md` and the chart
/// of `panels` under `title` to `target/bench/NAME.png`.
pub fn write_report(name: &str, table: &str, title: &str, panels: &[Panel]) -> Result<()> {
    println!("{table}");
    let out = crate::benchkit::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let md = out.join(format!("{name}.md"));
    std::fs::write(&md, table)?;
    let png = out.join(format!("{name}.png"));
    render(&png, title, panels)?;
    eprintln!("written to {} and {}", md.display(), png.display());
    Ok(())
}
