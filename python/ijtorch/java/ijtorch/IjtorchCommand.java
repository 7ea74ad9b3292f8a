package ijtorch;

import ij.Macro;
import ij.gui.GenericDialog;
import ij.plugin.PlugIn;
import ij.plugin.frame.Recorder;
import java.awt.Checkbox;
import java.awt.Choice;
import java.awt.TextField;
import java.util.Arrays;

/**
 * The PlugIn behind every "ijtorch ..." menu command. ImageJ instantiates it with the command
 * name as argument. Macro options can only be read on ImageJ's macro thread, so they are read
 * here and handed to Python explicitly; without options a dialog built from the Python
 * parameter model asks for them (and they are recorded for the Macro Recorder).
 */
public class IjtorchCommand implements PlugIn {

    @Override
    public void run(String command) {
        IjtorchRegistry.CommandHandler handler = IjtorchRegistry.command(command);
        boolean local = handler != null;
        if (!local && !IjtorchServer.configured()) {
            IjtorchRegistry.reportError(command, "no handler is registered for this command "
                    + "(start ImageJ from Python with ijtorch, or configure an ijtorch server: "
                    + "IJTORCH_SERVER or the IJ Prefs key ijtorch.server)");
            return;
        }
        String spec;
        try {  // no Python here: the server runs the command, if it can
            spec = local ? IjtorchRegistry.dialogSpec(command)
                    : IjtorchRemote.catalog(false).getProperty("command." + command);
        } catch (Exception e) {
            IjtorchRegistry.reportError(command, IjtorchServer.describe(e));
            return;
        }
        if (spec == null) {
            IjtorchRegistry.reportError(command, command + " cannot run on the ijtorch server at " + IjtorchServer.url()
                    + ": it needs in-process Python (start Fiji from Python: ijtorch fiji --fiji /path/to/Fiji.app)");
            return;
        }
        if ((!local || IjtorchRegistry.needsImage(command)) && ij.WindowManager.getCurrentImage() == null) {
            IjtorchRegistry.reportError(command, command + " needs an open image (open one or select its window)");
            return;  // before any dialog: it would only fail after OK
        }
        String options = Macro.getOptions();
        if (options == null && (options = askOptions(command, spec)) == null) {
            return;  // dialog cancelled
        }
        String error;
        try {
            error = local ? handler.run(command, options.trim()) : IjtorchRemote.runCommand(command, options.trim());
        } catch (Throwable t) {
            error = t.getClass().getSimpleName() + ": " + t.getMessage();
        }
        if (error != null) {
            IjtorchRegistry.reportError(command, error);
        }
    }

    /** Shows the dialog described by {@code spec} (lines of kind, key, default, choices, help; a number's
     *  choices column is what an empty field means, for a 0 that stands for e.g. the model's tuned value: the
     *  field then starts empty and an empty field gives 0, as the Macro Recorder records it). */
    static String askOptions(String command, String spec) {
        if (spec.isEmpty()) {
            return "";
        }
        GenericDialog gd = new GenericDialog(command);
        String[][] fields = Arrays.stream(spec.split("\n")).map(l -> l.split("\t", -1)).toArray(String[][]::new);
        StringBuilder help = new StringBuilder();
        for (String[] f : fields) {
            boolean empty = f[0].equals("number") && !f[3].isEmpty();
            if (f[0].equals("checkbox")) {
                gd.addCheckbox(f[1], Boolean.parseBoolean(f[2]));
            } else if (f[0].equals("choice")) {
                gd.addChoice(f[1], f[3].split("\\|"), f[2]);
            } else {
                gd.addStringField(f[1], empty && Double.parseDouble(f[2]) == 0 ? "" : f[2], f[0].equals("number") ? 10 : 25);
            }
            if (!f[4].isEmpty()) {
                help.append(f[1]).append(": ").append(empty ? f[4].replace("0 = " + f[3], "empty or 0 = " + f[3]) : f[4])
                        .append('\n');
            }
        }
        if (help.length() > 0) {
            gd.addMessage(help.toString());
        }
        gd.showDialog();
        if (gd.wasCanceled()) {
            return null;
        }
        // Read the components, not gd.getNext*(): OK's dispose() sets GenericDialog's own "record this"
        // flag and resets its counters on the thread that pressed OK, which races with this thread
        // (seen as a recorded line without options). So record the options here, as GenericDialog would.
        boolean record = Recorder.record;
        StringBuilder options = new StringBuilder();
        int text = 0, choice = 0, checkbox = 0;
        for (String[] f : fields) {
            if (f[0].equals("checkbox")) {
                if (((Checkbox) gd.getCheckboxes().get(checkbox++)).getState()) {
                    options.append(f[1]).append(' ');
                    if (record) {
                        Recorder.recordOption(f[1]);
                    }
                }
                continue;
            }
            String value;
            if (f[0].equals("choice")) {
                value = ((Choice) gd.getChoices().get(choice++)).getSelectedItem();
            } else {
                value = ((TextField) gd.getStringFields().get(text++)).getText();
                if (f[0].equals("number") && !f[3].isEmpty() && value.trim().isEmpty()) {
                    value = "0";  // read (and recorded) as 0: the tuned value
                }
            }
            options.append(f[1]).append('=').append(value.contains(" ") || value.isEmpty() ? "[" + value + "]" : value)
                    .append(' ');
            if (record) {
                Recorder.recordOption(f[1], value.isEmpty() ? "[]" : value);
            }
        }
        return options.toString();
    }
}
